package e2e

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A store that cannot grow (the file-size limit stands in for a full disk):
// every add answered 200 is on disk, the first refused one answers 503
// naming the store and leaves the registry as it was, /health says the
// store fails, and a restarted router has exactly what was answered.
func TestStoreThatCannotWriteRefusesChanges(t *testing.T) {
	dir := t.TempDir()
	args := []string{"--host", "127.0.0.1", "--port", strconv.Itoa(freePort(t)), "--state-dir", dir, "--wasm-filter", "none",
		"--health-check-interval", "3600"}
	// ulimit -f 128: files of at most 64 KiB; the store starts at 32 KiB.
	p := startPathEnv(t, "diffusion-router", "/bin/sh", nil, "-c",
		"ulimit -f 128; exec "+filepath.Join(binDir, "diffusion-router")+" "+strings.Join(args, " "))
	m := p.waitOutput(routerReady, 60*time.Second)
	front := m[1]

	var accepted []string
	refused := ""
	for i := 1; i <= 400 && refused == ""; i++ {
		u := fmt.Sprintf("http://10.77.%d.%d:9000", i/200, i%200+1)
		res := postJSON(t, front+"/add_worker", map[string]any{"url": u})
		switch res.Status {
		case 200:
			accepted = append(accepted, u)
		case 503:
			if !strings.Contains(fmt.Sprint(res.JSON(t)["error"]), "registry store") {
				t.Fatalf("503 without naming the store: %s", res.Body)
			}
			refused = u
		default:
			t.Fatalf("add %s: %d %s", u, res.Status, res.Body)
		}
	}
	if refused == "" || len(accepted) == 0 {
		t.Fatalf("the store never filled (%d adds accepted)", len(accepted))
	}
	if got := listURLs(t, front); len(got) != len(accepted) {
		t.Fatalf("registry holds %d workers after %d accepted adds and one refused", len(got), len(accepted))
	}
	h := get(t, front+"/health").JSON(t)
	store, _ := h["store"].(map[string]any)
	if store["healthy"] != false || store["write_failures"] == 0.0 {
		t.Fatalf("/health while the store fails: %v", h)
	}
	p.stop()

	r := startRouter(t, "--state-dir", dir, "--wasm-filter", "none", "--health-check-interval", "3600")
	got := listURLs(t, r.Front)
	if len(got) != len(accepted) {
		t.Fatalf("after a restart %d workers, %d were answered 200", len(got), len(accepted))
	}
	for _, u := range got {
		if u == refused {
			t.Fatalf("the refused worker %s is in the store", refused)
		}
	}
	t.Logf("%d adds accepted and kept, the next refused with 503", len(accepted))
}
