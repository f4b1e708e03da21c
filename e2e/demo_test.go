package e2e

import (
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var demoStarted = regexp.MustCompile(`demo worker started.* pid=(\d+)`)

// The demo fleet of make run is fake-worker processes the router starts
// beside itself (the router binary does not contain the stand-in), serves
// through Envoy, and stops when it stops.
func TestDemoWorkersAreProcessesStoppedWithTheRouter(t *testing.T) {
	r := startRouter(t, "--demo-workers", "2")
	var pids []int
	for _, m := range demoStarted.FindAllStringSubmatch(r.out.String(), -1) {
		pid, _ := strconv.Atoi(m[1])
		pids = append(pids, pid)
	}
	if len(pids) != 2 {
		t.Fatalf("router log names %d demo worker processes, want 2", len(pids))
	}
	t.Cleanup(func() {
		for _, pid := range pids {
			_ = syscall.Kill(-pid, syscall.SIGKILL) // only if the router failed to
		}
	})
	if urls := listURLs(t, r.API); len(urls) != 2 {
		t.Fatalf("registry lists %v, want the 2 demo workers", urls)
	}
	res := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "a cat", "size": "256x256"})
	if res.Status != http.StatusOK {
		t.Fatalf("image through the demo fleet: %d %s", res.Status, res.Body)
	}
	if id := res.Header.Get("X-Worker-Id"); !strings.HasPrefix(id, "demo-worker-") {
		t.Fatalf("answered by %q, want a demo worker", id)
	}
	r.stop()
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for syscall.Kill(pid, 0) == nil {
			if time.Now().After(deadline) {
				t.Fatalf("demo worker %d outlived the router", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
