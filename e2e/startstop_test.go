package e2e

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/portowner"
)

// kill -9 of the control plane started with default flags (no
// --state-dir), then a restart with the same flags: the restarted router
// finds the Envoy left on its front port and adopts it, so one process
// listens there, and a worker removed after the restart gets no request.
// Meanwhile the front /health says the control plane is away, not that a
// worker is unreachable.
func TestRestartWithDefaultFlagsAdoptsEnvoy(t *testing.T) {
	t.Parallel()
	ws, urls := startFleet(t, 3)
	env := []string{"TMPDIR=" + t.TempDir()}
	port := freePort(t)
	args := append([]string{"--port", strconv.Itoa(port), "--worker-urls"}, urls...)
	r := launchRouter(t, env, args...)
	envoys := portowner.Holders(port)
	if len(envoys) != 1 {
		t.Fatalf("%d processes listen on the front port, want Envoy alone: %v", len(envoys), envoys)
	}
	envoyPID := envoys[0].PID
	t.Cleanup(func() { _ = syscall.Kill(envoyPID, syscall.SIGKILL) })

	r.kill()
	h := get(t, r.Front+"/health")
	if h.Status != 503 || !strings.Contains(string(h.Body), "control plane unreachable") {
		t.Fatalf("front /health with the control plane down = %d %s, want 503 naming the control plane", h.Status, h.Body)
	}

	r2 := launchRouter(t, env, args...)
	if !strings.Contains(r2.out.String(), "adopted the running Envoy") {
		t.Fatal("the restarted router did not say it took its Envoy over")
	}
	if got := portowner.Holders(port); len(got) != 1 || got[0].PID != envoyPID {
		t.Fatalf("after the restart the front port is held by %v, want the first Envoy (pid %d) alone", got, envoyPID)
	}
	removed := ws[0]
	if rm := postJSON(t, r2.Front+"/remove_worker", map[string]any{"url": removed.URL}); rm.Status != 200 {
		t.Fatalf("remove_worker = %d %s", rm.Status, rm.Body)
	}
	eventually(t, 20*time.Second, "the removed worker to leave the registry", func() bool {
		_, in := workersByURL(t, r2.API)[removed.URL]
		return !in
	})
	before := stats(t, removed).ServedTotal
	for i := range 60 {
		res, err := tryDo(context.Background(), "POST", r2.Front+"/v1/images/generations", "application/json",
			strings.NewReader(`{"prompt":"x","num_inference_steps":2}`))
		if err != nil || res.Status != 200 {
			t.Fatalf("request %d after the removal: %v %d %s", i, err, res.Status, res.Body)
		}
	}
	if got := stats(t, removed).ServedTotal - before; got != 0 {
		t.Fatalf("%d of 60 requests reached the worker removed after the restart", got)
	}
}

// The router refuses to start, at once and with one line naming the cause,
// when it cannot serve: its front port taken, an Envoy that exits at
// start, xDS credentials that do not belong together.
func TestFailsFastNamingTheCause(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port

	dir := t.TempDir()
	badEnvoy := filepath.Join(dir, "envoy")
	script := "#!/bin/sh\necho '[critical][main] error initializing configuration: simulated broken bootstrap' >&2\nexit 1\n"
	if err := os.WriteFile(badEnvoy, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	mismatched := filepath.Join(dir, "tls")
	other := filepath.Join(dir, "other")
	for _, d := range []string{mismatched, other} {
		if out, err := exec.Command(filepath.Join(binDir, "diffusion-router"), "certs", "--dir", d).CombinedOutput(); err != nil {
			t.Fatalf("certs: %v %s", err, out)
		}
	}
	caPEM, err := os.ReadFile(filepath.Join(other, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mismatched, "ca.pem"), caPEM, 0o644); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"front port in use", []string{"--port", strconv.Itoa(takenPort)}, "front port " + strconv.Itoa(takenPort) + " is already in use by pid " + strconv.Itoa(os.Getpid())},
		{"envoy exits at start", []string{"--port", strconv.Itoa(freePort(t)), "--envoy-bin", badEnvoy}, "simulated broken bootstrap"},
		{"mismatched credentials", []string{"--port", strconv.Itoa(freePort(t)), "--xds-tls-dir", mismatched}, "do not belong together"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--host", "127.0.0.1", "--state-dir", t.TempDir()}, tc.args...)
			p := startPath(t, "diffusion-router", filepath.Join(binDir, "diffusion-router"), args...)
			select {
			case <-p.done:
			case <-time.After(20 * time.Second):
				t.Fatalf("still running after 20 s:\n%s", tail(p.out.String(), 30))
			}
			if code := p.cmd.ProcessState.ExitCode(); code == 0 {
				t.Fatalf("exit status 0, want non-zero:\n%s", tail(p.out.String(), 30))
			}
			out := p.out.String()
			last := ""
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				if strings.Contains(line, "diffusion-router stopped") {
					last = line
				}
			}
			if !strings.Contains(last, tc.want) {
				t.Fatalf("the stopping line %q does not name the cause %q:\n%s", last, tc.want, tail(out, 30))
			}
			if strings.Contains(out, "ready on http://") {
				t.Fatal("it said it was ready")
			}
		})
	}
}
