package api

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/diffrouter/diffusion-router/fleet"
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

// docLine is the item of a docs page (a table row, a list item, a
// paragraph) whose first line starts with prefix, its lines joined.
func docLine(t *testing.T, doc page, prefix string) string {
	t.Helper()
	lines := strings.Split(doc.text, "\n")
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
	t.Fatalf("%s has no line starting %q", doc.path, prefix)
	return ""
}

// page is a docs page's path and text.
type page struct{ path, text string }

func readPage(t *testing.T, path string) page {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return page{path, string(b)}
}

// The fields the docs promise for each answer are fields of its type: a
// renamed field fails here, not in a user's client.
func TestAnswersHaveTheFieldsTheDocsPromise(t *testing.T) {
	api, compatPage := readPage(t, "../docs/api.md"), readPage(t, "../docs/compatibility.md")
	compat := docLine(t, compatPage, "- **Same shapes**") + docLine(t, compatPage, "- **The seed router's endpoints**")
	tests := []struct {
		answer any
		line   string // where the docs promise the fields
		fields []string
	}{
		{ListAnswer{}, docLine(t, api, "| `GET /list_workers`"), []string{"urls"}},
		{WorkersAnswer{}, docLine(t, api, "| `GET /workers`"), []string{"workers", "weight_versions"}},
		{HealthAnswer{}, docLine(t, api, "| `GET /health`"), []string{"weight_versions"}},
		{VersionsView{}, docLine(t, api, "| `GET /workers`"), []string{"history", "updating", "workers", "groups", "open_groups"}},
		{WorkerView{}, docLine(t, api, "| `GET /workers`"), []string{"worker_id", "display_id", "url", "is_sleeping",
			"state", "reason", "since", "is_dead", "consecutive_failures", "active_requests", "requests", "errors",
			"task_types", "models", "video_support"}},
		{HealthAnswer{}, docLine(t, api, "| `GET /health`"), []string{"status", "healthy_workers", "total_workers"}},
		{HealthAnswer{}, compat, []string{"sleeping_workers"}},
		{AddAnswer{}, compat, []string{"status", "worker_urls", "urls"}},
		{AddAnswer{}, docLine(t, api, "| `POST /add_worker`"), []string{"added", "same_server_as", "synced"}},
		{WorkerAnswer{}, compat, []string{"worker"}},
		{ChangeAnswer{}, compat, []string{"status"}},
		{RemoveAnswer{}, compat, []string{"status", "worker_id"}},
		{ErrorAnswer{}, docLine(t, api, "Errors are always JSON"), []string{"error"}},
	}
	for _, tt := range tests {
		typ := reflect.TypeOf(tt.answer)
		names := jsonNames(typ)
		for _, f := range tt.fields {
			if !strings.Contains(tt.line, "`"+f+"`") && !strings.Contains(tt.line, `"`+f+`"`) {
				t.Errorf("the docs no longer promise %q where the test looks (%.60s...); update the test with them", f, tt.line)
			}
			if !names[f] {
				t.Errorf("%s has no JSON field %q, which the docs promise", typ.Name(), f)
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

// The Python launcher reads a weight update's answer by its JSON names
// (WeightUpdate.from_answer): each must be a field of UpdateAnswer, or
// the launcher would read zeros.
func TestLauncherReadsTheUpdateAnswer(t *testing.T) {
	src, err := os.ReadFile("../python/diffusion_router/launcher.py")
	if err != nil {
		t.Fatal(err)
	}
	from := string(src)
	start := strings.Index(from, "def from_answer(")
	if start < 0 {
		t.Fatal("launcher.py has no from_answer")
	}
	from = from[start:]
	if end := strings.Index(from, "\nclass "); end > 0 {
		from = from[:end]
	}
	update := jsonNames(reflect.TypeOf(UpdateAnswer{}))
	result := jsonNames(reflect.TypeOf(fleet.CallResult{}))
	read := regexp.MustCompile(`\b(body|r)\.get\("([a-z_]+)"`).FindAllStringSubmatch(from, -1)
	if len(read) < 8 {
		t.Fatalf("found %d reads in from_answer; the test no longer matches the launcher", len(read))
	}
	for _, m := range read {
		if names := map[string]map[string]bool{"body": update, "r": result}[m[1]]; !names[m[2]] {
			t.Errorf("the launcher reads %q, which the answer does not have", m[2])
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
