// Package e2e runs the real parts together over loopback: the diffusion-router
// binary (control plane plus its supervised Envoy) and fake-worker processes.
// Every process is started in its own process group and stopped by the test
// that started it, also when the test fails.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/harness/poll"

	"github.com/diffrouter/diffusion-router/envoy"
	"github.com/diffrouter/diffusion-router/harness/bench"
	"github.com/diffrouter/diffusion-router/harness/freeport"
	"github.com/diffrouter/diffusion-router/procgroup"
)

var (
	binDir   string
	envoyBin string
)

func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	var err error
	// Not skipped when Envoy is missing: an end-to-end suite that silently
	// runs nothing would pass for the wrong reason.
	if envoyBin, err = envoy.FindBinary(""); err != nil {
		return 0, fmt.Errorf("%w (run `make envoy`)", err)
	}
	dir, err := os.MkdirTemp("", "diffusion-router-e2e-bin-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	binDir = dir
	args := []string{"build", "-o", dir}
	if os.Getenv("DIFFROUTER_E2E_RACE") == "1" {
		// The control plane is concurrent: run it under the race detector.
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/diffusion-router", "../cmd/fake-worker", "../cmd/bench")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return 0, fmt.Errorf("build binaries: %w", err)
	}
	// The Wasm filter lands next to the router binary, where it looks first.
	wasm := exec.Command("go", "build", "-buildmode=c-shared", "-o", filepath.Join(dir, "diffusion-tagger.wasm"), "../filter")
	wasm.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	wasm.Stdout, wasm.Stderr = os.Stderr, os.Stderr
	if err := wasm.Run(); err != nil {
		return 0, fmt.Errorf("build the wasm filter: %w", err)
	}
	return m.Run(), nil
}

// proc is a process started by a test.
type proc struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	g    *procgroup.Group
	done <-chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs a binary from binDir in its own process group. The test's
// cleanup stops the whole group, and prints the output if the test failed.
func start(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	return startPath(t, name, filepath.Join(binDir, name), args...)
}

// startPath is start for a binary outside binDir (Envoy).
func startPath(t testing.TB, name, path string, args ...string) *proc {
	t.Helper()
	return startPathEnv(t, name, path, nil, args...)
}

// startPathEnv is startPath with extra environment variables.
func startPathEnv(t testing.TB, name, path string, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(path, args...)
	p := &proc{t: t, name: name, cmd: cmd, out: &syncBuffer{}}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.Env = append(append(os.Environ(), envoy.EnvVar+"="+envoyBin), env...)
	g, err := procgroup.Start(cmd)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p.g, p.done = g, g.Done()
	t.Cleanup(func() {
		p.stop()
		if strings.Contains(p.out.String(), "WARNING: DATA RACE") {
			t.Errorf("%s reported a data race", name)
		}
		if t.Failed() {
			t.Logf("--- output of %s %v ---\n%s", name, args, tail(p.out.String(), 200))
		}
	})
	return p
}

func tail(s string, lines int) string {
	all := strings.Split(s, "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// stop sends SIGTERM to the process group, then SIGKILL after a grace.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.g.Stop(10 * time.Second)
}

// kill sends SIGKILL to the process alone, as a crash would.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// waitOutput polls the output until re matches, and returns the submatches.
func (p *proc) waitOutput(re *regexp.Regexp, timeout time.Duration) []string {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if m := re.FindStringSubmatch(p.out.String()); m != nil {
			return m
		}
		select {
		case <-p.done:
			p.t.Fatalf("%s exited before printing %q:\n%s", p.name, re, tail(p.out.String(), 100))
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s did not print %q within %s:\n%s", p.name, re, timeout, tail(p.out.String(), 100))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var workerReady = regexp.MustCompile(`listening on (http://\S+)`)

// fakeWorker is a running fake-worker.
type fakeWorker struct {
	*proc
	URL string
	ID  string
}

// startWorker runs a fake worker on a free port; args add to the defaults
// (milliseconds instead of seconds).
func startWorker(t testing.TB, args ...string) *fakeWorker {
	t.Helper()
	all := append([]string{"--time-scale", "0.001", "--update-time", "2s", "--seed", "1"}, args...)
	p := start(t, "fake-worker", all...)
	m := p.waitOutput(workerReady, 15*time.Second)
	id := regexp.MustCompile(`fake-worker (\S+) listening`).FindStringSubmatch(p.out.String())
	return &fakeWorker{proc: p, URL: m[1], ID: id[1]}
}

// routerProc is a running diffusion-router with its Envoy.
type routerProc struct {
	*proc
	Front string // http://host:port
	API   string
	Admin string
}

var routerReady = regexp.MustCompile(`ready on (http://\S+) \(registry API (http://\S+), Envoy admin (http://[^)\s]+)\)`)

// startRouter runs the router on a free front port. args add to (and may
// override) the defaults.
func startRouter(t testing.TB, args ...string) *routerProc {
	t.Helper()
	return startRouterEnv(t, nil, args...)
}

// startRouterEnv is startRouter with extra environment variables.
func startRouterEnv(t testing.TB, env []string, args ...string) *routerProc {
	t.Helper()
	all := append([]string{"--state-dir", t.TempDir()}, args...)
	return launchRouter(t, env, all...)
}

// launchRouter is startRouterEnv without a state directory: the router's
// default one (under the TMPDIR env gives it).
func launchRouter(t testing.TB, env []string, args ...string) *routerProc {
	t.Helper()
	all := append([]string{"--host", "127.0.0.1", "--port", strconv.Itoa(freePort(t)),
		"--health-check-interval", "1", "--envoy-concurrency", "2", "--log-level", "debug"}, args...)
	// The router's Envoy runs in its own process group (it outlives a
	// crashed control plane by design), so stopping the router's group
	// does not reach it: a router killed mid-drain (a failed test with
	// requests in flight) would leave it running. Registered first, this
	// runs after the router's own stop.
	var envoyPID int
	t.Cleanup(func() {
		if envoyPID > 0 && alive(envoyPID) && strings.Contains(readCmdline(envoyPID), "envoy") {
			_ = killPID(envoyPID)
		}
	})
	p := startPathEnv(t, "diffusion-router", filepath.Join(binDir, "diffusion-router"), env, all...)
	m := p.waitOutput(routerReady, 60*time.Second)
	envoyPID = bench.ChildPID(p.cmd.Process.Pid, "envoy") // none when it adopted one
	return &routerProc{proc: p, Front: m[1], API: m[2], Admin: m[3]}
}

// readCmdline is a process's command line ("" when gone).
func readCmdline(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return string(b)
}

// ports hands out the ports the tests give to other processes (an Envoy's
// front, a router's xDS port). They come from below the kernel's ephemeral
// range: a port found by binding port 0 and handed on was once taken by
// another test's router binding port 0 before this test's Envoy bound it.
var ports = freeport.New()

func freePort(t testing.TB) int {
	t.Helper()
	p, err := ports.Pick("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var client = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}

// response is a finished HTTP exchange.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r response) JSON(t testing.TB) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(r.Body, &v); err != nil {
		t.Fatalf("body is not a JSON object (status %d): %v\n%s", r.Status, err, r.Body)
	}
	return v
}

func do(t testing.TB, method, url, contentType string, body io.Reader) response {
	t.Helper()
	r, err := tryDo(context.Background(), method, url, contentType, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

func tryDo(ctx context.Context, method, url, contentType string, body io.Reader) (response, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return response{}, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b}, nil
}

func postJSON(t testing.TB, url string, v any) response {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, http.MethodPost, url, "application/json", bytes.NewReader(b))
}

func get(t testing.TB, url string) response {
	t.Helper()
	return do(t, http.MethodGet, url, "", nil)
}

// eventually polls cond until it is true or the deadline passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, timeout, 25*time.Millisecond, what, cond)
}

// workerStats reads a fake worker's /stats.
type workerStats struct {
	WorkerID      string         `json:"worker_id"`
	ModelPath     string         `json:"model_path"`
	Served        map[string]int `json:"served"`
	ServedTotal   int            `json:"served_total"`
	Failed        int            `json:"failed"`
	QueueDepth    int            `json:"queue_depth"`
	WaitTotalSecs float64        `json:"queue_wait_total_seconds"`
	BusySeconds   float64        `json:"busy_seconds"`
	Hung          int            `json:"hung"`
	Resets        int            `json:"resets"`
}

func stats(t testing.TB, w *fakeWorker) workerStats {
	t.Helper()
	var s workerStats
	r := get(t, w.URL+"/stats")
	if err := json.Unmarshal(r.Body, &s); err != nil {
		t.Fatalf("stats of %s: %v", w.URL, err)
	}
	return s
}

func listURLs(t testing.TB, base string) []string {
	t.Helper()
	var v struct {
		URLs []string `json:"urls"`
	}
	r := get(t, base+"/list_workers")
	if err := json.Unmarshal(r.Body, &v); err != nil {
		t.Fatalf("list_workers: %v: %s", err, r.Body)
	}
	return v.URLs
}

func regexpMust(s string) *regexp.Regexp { return regexp.MustCompile(s) }

// childPID waits for the child of parent whose command name is comm.
func childPID(t testing.TB, parent int, comm string) int {
	t.Helper()
	var found int
	eventually(t, 10*time.Second, comm+" child of "+strconv.Itoa(parent), func() bool {
		found = bench.ChildPID(parent, comm)
		return found != 0
	})
	return found
}

func killPID(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }
