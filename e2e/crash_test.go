package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// kill -9 of the control plane in the default mode (local Envoy) under
// load: Envoy outlives it and keeps routing on its last configuration, no
// request fails, and the restarted control plane takes the same Envoy over
// (no second Envoy, no dropped connection) and manages it again.
func TestControlPlaneCrashKeepsLocalEnvoy(t *testing.T) {
	t.Parallel()
	_, urls := startFleet(t, 3)
	state := t.TempDir()
	port := strconv.Itoa(freePort(t))
	args := append([]string{"--port", port, "--state-dir", state, "--worker-urls"}, urls...)
	r := startRouter(t, args...)
	pidFile := filepath.Join(state, "envoy.pid")
	envoyPID := func() int {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return 0
		}
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return n
	}
	pid := envoyPID()
	if pid == 0 {
		t.Fatal("no envoy.pid in the state directory")
	}
	// Whatever happens below, this test's Envoy does not outlive it.
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })

	g := &loadGen{}
	done := make(chan struct{})
	go func() { defer close(done); g.run(r.Front, `{"prompt":"x","num_inference_steps":200}`, 1500, 8) }()
	eventually(t, 30*time.Second, "load under way", func() bool { return g.sent.Load() >= 100 })

	r.kill() // a crash: SIGKILL to the control plane alone
	atKill := g.ok.Load()
	eventually(t, 10*time.Second, "requests served with the control plane down", func() bool { return g.ok.Load() >= atKill+100 })
	if !alive(pid) {
		t.Fatal("Envoy died with the control plane")
	}

	r2 := startRouter(t, args...)
	if got := envoyPID(); got != pid {
		t.Fatalf("restarted control plane runs Envoy %d, want the surviving %d", got, pid)
	}
	if !regexpMust(`adopted the running Envoy`).MatchString(r2.out.String()) {
		t.Fatal("the restarted control plane did not say it took Envoy over")
	}
	<-done
	if f := g.failed.Load(); f != 0 {
		t.Fatalf("%d of 1500 requests failed across the crash and restart (first: %v)", f, g.firstFailure.Load())
	}
	// It manages the fleet again: the registry answers through Envoy.
	if h := get(t, r2.Front+"/health"); h.Status != 200 || h.JSON(t)["healthy_workers"] != 3.0 {
		t.Fatalf("/health after the restart: %d %s", h.Status, h.Body)
	}
	// And stops the adopted Envoy when it stops.
	r2.stop()
	eventually(t, 15*time.Second, "the adopted Envoy to stop with its control plane", func() bool {
		return !alive(pid)
	})
}

// alive reports whether pid runs (a zombie, which nobody may reap in a
// container, has an empty command line).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return err == nil && len(b) > 0
}
