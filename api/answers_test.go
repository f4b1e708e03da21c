package api

import (
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/diffrouter/diffusion-router/queue"
	"github.com/diffrouter/diffusion-router/registry"
)

// jsonNames is every JSON name an answer type writes, embedded structs'
// included.
func jsonNames(t reflect.Type) map[string]bool {
	out := map[string]bool{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("json"), ",")[0]
		switch {
		case tag == "-":
		case f.Anonymous && tag == "":
			for k := range jsonNames(f.Type) {
				out[k] = true
			}
		case tag != "":
			out[tag] = true
		}
	}
	return out
}

// readmeLine is the README.md item (a table row, a list item, a
// paragraph) whose first line starts with prefix, its lines joined.
func readmeLine(t *testing.T, readme, prefix string) string {
	t.Helper()
	lines := strings.Split(readme, "\n")
	for i, l := range lines {
		if !strings.HasPrefix(strings.TrimSpace(l), prefix) {
			continue
		}
		item := l
		for _, next := range lines[i+1:] {
			n := strings.TrimSpace(next)
			if n == "" || strings.HasPrefix(n, "- ") || strings.HasPrefix(n, "|") {
				break
			}
			item += " " + n
		}
		return item
	}
	t.Fatalf("README.md has no line starting %q", prefix)
	return ""
}

// The fields README promises for each answer are fields of its type: a
// renamed field fails here, not in a user's client.
func TestAnswersHaveTheFieldsTheReadmePromises(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	compat := readmeLine(t, readme, "- **Same shapes**") + readmeLine(t, readme, "- **The seed router's endpoints**")
	tests := []struct {
		answer any
		line   string // where README promises the fields
		fields []string
	}{
		{ListAnswer{}, readmeLine(t, readme, "| `GET /list_workers`"), []string{"urls"}},
		{WorkersAnswer{}, readmeLine(t, readme, "| `GET /workers`"), []string{"workers", "weight_versions"}},
		{HealthAnswer{}, readmeLine(t, readme, "| `GET /health`"), []string{"weight_versions"}},
		{VersionsView{}, readmeLine(t, readme, "| `GET /workers`"), []string{"history", "updating", "workers", "groups", "open_groups"}},
		{WorkerView{}, readmeLine(t, readme, "| `GET /workers`"), []string{"worker_id", "display_id", "url", "is_sleeping",
			"state", "reason", "since", "is_dead", "consecutive_failures", "active_requests", "requests", "errors",
			"task_types", "models", "video_support"}},
		{HealthAnswer{}, readmeLine(t, readme, "| `GET /health`"), []string{"status", "healthy_workers", "total_workers"}},
		{HealthAnswer{}, compat, []string{"sleeping_workers"}},
		{AddAnswer{}, compat, []string{"status", "worker_urls", "urls"}},
		{AddAnswer{}, readmeLine(t, readme, "| `POST /add_worker`"), []string{"added", "same_server_as", "synced"}},
		{WorkerAnswer{}, compat, []string{"worker"}},
		{ChangeAnswer{}, compat, []string{"status"}},
		{RemoveAnswer{}, compat, []string{"status", "worker_id"}},
		{ErrorAnswer{}, readmeLine(t, readme, "Errors are always JSON"), []string{"error"}},
	}
	for _, tt := range tests {
		typ := reflect.TypeOf(tt.answer)
		names := jsonNames(typ)
		for _, f := range tt.fields {
			if !strings.Contains(tt.line, "`"+f+"`") && !strings.Contains(tt.line, `"`+f+`"`) {
				t.Errorf("README no longer promises %q where the test looks (%.60s...); update the test with it", f, tt.line)
			}
			if !names[f] {
				t.Errorf("%s has no JSON field %q, which README promises", typ.Name(), f)
			}
		}
	}
	// A fleet-wide call's answer has the weight update's shape.
	update := jsonNames(reflect.TypeOf(UpdateAnswer{}))
	for f := range jsonNames(reflect.TypeOf(CallAnswer{})) {
		if !update[f] {
			t.Errorf("a weight update's answer lacks %q, which every other fleet-wide call's answer has", f)
		}
	}
}

// The groups an answer lists are bounded, those with requests waiting
// first; open_groups counts them all.
func TestVersionsViewBoundsGroups(t *testing.T) {
	q := queue.New(queue.Options{})
	for i := range maxShownGroups + 50 {
		r := queue.Request{Key: queue.Key{Node: "n", Ticket: fmt.Sprint(i)}, Tenant: "t", Group: fmt.Sprintf("g%03d", i)}
		if _, err := q.Enter(r); err != nil {
			t.Fatal(err)
		}
	}
	q.Cancel(queue.Key{Node: "n", Ticket: "0"}) // g000: open, nothing waiting
	v := versionsView(registry.Snapshot{}, q)
	if v.OpenGroups != maxShownGroups+50 || len(v.Groups) != maxShownGroups {
		t.Fatalf("open %d, listed %d", v.OpenGroups, len(v.Groups))
	}
	if _, listed := v.Groups["g000"]; listed {
		t.Fatal("a group with nothing waiting was listed before ones with requests waiting")
	}
}
