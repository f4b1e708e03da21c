package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// workerState reads one worker's entry from GET /workers.
func workerState(t *testing.T, base, url string) map[string]any {
	t.Helper()
	var v struct {
		Workers []map[string]any `json:"workers"`
	}
	if err := json.Unmarshal(get(t, base+"/workers").Body, &v); err != nil {
		t.Fatal(err)
	}
	for _, w := range v.Workers {
		if w["url"] == url {
			return w
		}
	}
	return nil
}

func stateOf(t *testing.T, base, url string) string {
	t.Helper()
	if w := workerState(t, base, url); w != nil {
		return fmt.Sprint(w["state"])
	}
	return "absent"
}

// loadGen sends bounded closed-loop load and counts outcomes.
type loadGen struct {
	sent, ok, failed atomic.Int64
	firstFailure     atomic.Value
}

func (g *loadGen) run(base, body string, total, concurrency int) {
	var wg sync.WaitGroup
	var next atomic.Int64
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(total) {
				g.sent.Add(1)
				resp, err := tryDo(context.Background(), "POST", base+"/v1/images/generations", "application/json", strings.NewReader(body))
				if err != nil || resp.Status != 200 {
					g.failed.Add(1)
					if err != nil {
						g.firstFailure.CompareAndSwap(nil, err.Error())
					} else {
						g.firstFailure.CompareAndSwap(nil, fmt.Sprintf("%d %s", resp.Status, resp.Body))
					}
					continue
				}
				g.ok.Add(1)
			}
		}()
	}
	wg.Wait()
}

// TestKilledWorkerStaysOut: kill -9 one of 4 workers under load. Only the
// requests it held fail; it is quarantined; restarted on the same port it
// gets nothing until an operator re-adds it.
func TestKilledWorkerStaysOut(t *testing.T) {
	t.Parallel()
	workers, urls := startFleet(t, 4)
	victim := workers[0]
	r := startRouter(t, append([]string{"--worker-urls"}, urls...)...)

	g := &loadGen{}
	done := make(chan struct{})
	go func() { defer close(done); g.run(r.Front, `{"prompt":"x","num_inference_steps":50}`, 2000, 32) }()

	eventually(t, 30*time.Second, "load to reach 400 requests", func() bool { return g.sent.Load() >= 400 })
	held := stats(t, victim).QueueDepth
	killedAt := time.Now()
	victim.kill()

	eventually(t, 5*time.Second, "the killed worker to be quarantined", func() bool {
		return stateOf(t, r.Front, victim.URL) == "quarantined"
	})
	quarantineDelay := time.Since(killedAt)

	// Restart it on the same port while the load goes on.
	port := victim.URL[strings.LastIndexByte(victim.URL, ':')+1:]
	revived := startWorker(t, "--port", port)
	<-done

	// A request can be between Envoy and the worker's HTTP handler (in the
	// socket buffer) when the depth is read; allow for two of those.
	if f := g.failed.Load(); f > int64(held)+2 {
		t.Fatalf("%d client failures, but the killed worker held only %d requests (first failure: %v)", f, held, g.firstFailure.Load())
	}
	if g.ok.Load()+g.failed.Load() != 2000 {
		t.Fatalf("ok %d + failed %d != 2000", g.ok.Load(), g.failed.Load())
	}
	t.Logf("killed worker held %d requests; %d client failures; quarantined %v after the kill", held, g.failed.Load(), quarantineDelay)
	if s := stats(t, revived); s.ServedTotal != 0 {
		t.Fatalf("restarted worker served %d requests while quarantined", s.ServedTotal)
	}
	w := workerState(t, r.Front, victim.URL)
	if w["is_dead"] != true || w["reason"] == "" || w["since"] == nil {
		t.Fatalf("quarantined worker view = %v", w)
	}
	// It stays out across probes (interval 1 s): watch for a change that
	// must not happen, for a bounded window of two probe intervals.
	probeDeadline := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(probeDeadline) {
		if st := stateOf(t, r.Front, victim.URL); st != "quarantined" {
			t.Fatalf("quarantined worker became %s by itself", st)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The operator re-admits it; then it serves.
	if resp := postJSON(t, r.Front+"/add_worker", map[string]any{"url": victim.URL}); resp.Status != 200 || resp.JSON(t)["readmitted"] != true {
		t.Fatalf("re-admission = %d %s", resp.Status, resp.Body)
	}
	after := &loadGen{}
	after.run(r.Front, `{"prompt":"x","num_inference_steps":50}`, 80, 8)
	if after.failed.Load() != 0 || stats(t, revived).ServedTotal == 0 {
		t.Fatalf("after re-admission: %d failures, re-admitted worker served %d", after.failed.Load(), stats(t, revived).ServedTotal)
	}
}

// TestFailingWorkerEjected: a worker answering 500 is ejected after the
// configured count of failures, and quarantined.
func TestFailingWorkerEjected(t *testing.T) {
	t.Parallel()
	good := startWorker(t)
	bad := startWorker(t, "--fail-rate", "1")
	r := startRouter(t, "--outlier-consecutive-failures", "3", "--worker-urls", good.URL, bad.URL)
	g := &loadGen{}
	g.run(r.Front, `{"prompt":"x","num_inference_steps":4}`, 60, 1)
	eventually(t, 5*time.Second, "the failing worker to be quarantined", func() bool {
		return stateOf(t, r.Front, bad.URL) == "quarantined"
	})
	failed := stats(t, bad).Failed
	// Ejection happens on the third failure. Envoy's outlier detector runs
	// on its main thread, after the worker thread reported the failure, so
	// on a loaded machine a few more sequential requests can slip through.
	if failed < 3 || failed > 6 {
		t.Fatalf("failing worker answered %d requests before ejection, want 3 (at most 6)", failed)
	}
	if int(g.failed.Load()) != failed {
		t.Fatalf("client saw %d failures, worker failed %d", g.failed.Load(), failed)
	}
	reason := fmt.Sprint(workerState(t, r.Front, bad.URL)["reason"])
	if !strings.Contains(reason, "outlier") {
		t.Fatalf("reason = %q", reason)
	}
}

// TestHangingWorkerCutByTimeout: a worker that accepts and never answers is
// cut by --timeout and ejected.
func TestHangingWorkerCutByTimeout(t *testing.T) {
	t.Parallel()
	good := startWorker(t)
	hang := startWorker(t, "--hang-rate", "1")
	r := startRouter(t, "--timeout", "0.3", "--outlier-consecutive-failures", "2", "--worker-urls", good.URL, hang.URL)
	var timeouts int
	for range 20 {
		resp := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "x", "num_inference_steps": 4})
		switch resp.Status {
		case 200:
		case 504:
			timeouts++
			if msg, _ := resp.JSON(t)["error"].(string); !strings.Contains(msg, "timeout") {
				t.Fatalf("504 body = %s", resp.Body)
			}
		default:
			t.Fatalf("status %d %s", resp.Status, resp.Body)
		}
	}
	eventually(t, 5*time.Second, "the hanging worker to be quarantined", func() bool {
		return stateOf(t, r.Front, hang.URL) == "quarantined"
	})
	if timeouts < 2 || timeouts > 3 {
		t.Fatalf("%d requests timed out, want 2 (ejection threshold) or 3", timeouts)
	}
}

// TestMajorityFailing: 5 of 8 workers fail at once; all 5 are ejected and
// stay out (neither Envoy's percentage cap nor panic mode brings them back),
// the other 3 serve everything.
func TestMajorityFailing(t *testing.T) {
	t.Parallel()
	workers, urls := startFleet(t, 8)
	r := startRouter(t, append([]string{"--outlier-consecutive-failures", "3", "--worker-urls"}, urls...)...)
	for _, w := range workers[:5] {
		resp := postJSON(t, w.URL+"/_fake/faults", map[string]any{"fail_rate": 1})
		if resp.Status != 200 {
			t.Fatalf("set fault: %d", resp.Status)
		}
	}
	warm := &loadGen{}
	warm.run(r.Front, `{"prompt":"x","num_inference_steps":4}`, 200, 8)
	eventually(t, 10*time.Second, "all 5 failing workers to be quarantined", func() bool {
		for _, w := range workers[:5] {
			if stateOf(t, r.Front, w.URL) != "quarantined" {
				return false
			}
		}
		return true
	})
	// Each failing worker fails at most the threshold plus what was in
	// flight to it (the concurrency) before its ejection took effect.
	if f := warm.failed.Load(); f > 5*(3+8) {
		t.Fatalf("%d failures before the ejections, want at most %d", f, 5*(3+8))
	}
	before := make([]int, 5)
	for i, w := range workers[:5] {
		before[i] = stats(t, w).ServedTotal + stats(t, w).Failed
	}
	steady := &loadGen{}
	steady.run(r.Front, `{"prompt":"x","num_inference_steps":4}`, 300, 8)
	if steady.failed.Load() != 0 {
		t.Fatalf("%d failures with 3 healthy workers left (first: %v)", steady.failed.Load(), steady.firstFailure.Load())
	}
	for i, w := range workers[:5] {
		if got := stats(t, w).ServedTotal + stats(t, w).Failed; got != before[i] {
			t.Fatalf("ejected worker %s got %d more requests", w.ID, got-before[i])
		}
	}
	for _, w := range workers[5:] {
		if stateOf(t, r.Front, w.URL) != "active" {
			t.Fatalf("healthy worker %s is %s", w.ID, stateOf(t, r.Front, w.URL))
		}
	}
	h := get(t, r.Front+"/health").JSON(t)
	if h["healthy_workers"] != 3.0 || h["dead_workers"] != 5.0 {
		t.Fatalf("/health = %v", h)
	}
}

// TestBusyWorkerNotQuarantined: a worker busy with long generations still
// answers /health, so probes never take it out.
func TestBusyWorkerNotQuarantined(t *testing.T) {
	t.Parallel()
	busy := startWorker(t, "--time-scale", "0.05") // 50 steps at 1024^2: ~0.36 s each
	r := startRouter(t, "--health-check-interval", "0.2", "--health-check-failure-threshold", "2",
		"--health-check-timeout", "0.5", "--worker-urls", busy.URL)
	g := &loadGen{}
	g.run(r.Front, `{"prompt":"x","num_inference_steps":50}`, 12, 4) // ~4 s of queued work
	if g.failed.Load() != 0 {
		t.Fatalf("%d failures on a busy worker", g.failed.Load())
	}
	w := workerState(t, r.Front, busy.URL)
	if w["state"] != "active" || w["consecutive_failures"] != 0.0 {
		t.Fatalf("busy worker = %v", w)
	}
}

// TestAllQuarantined: with every worker out, requests get a JSON 503 that
// says so.
func TestAllQuarantined(t *testing.T) {
	t.Parallel()
	w := startWorker(t)
	r := startRouter(t, "--worker-urls", w.URL)
	id := strings.NewReplacer(":", "%3A", "/", "%2F").Replace(w.URL)
	if resp := do(t, "PUT", r.Front+"/workers/"+id, "application/json", strings.NewReader(`{"is_dead": true}`)); resp.Status != 200 {
		t.Fatalf("quarantine = %d %s", resp.Status, resp.Body)
	}
	resp := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "x"})
	if resp.Status != 503 || !strings.Contains(fmt.Sprint(resp.JSON(t)["error"]), "all workers are quarantined") {
		t.Fatalf("all quarantined = %d %s", resp.Status, resp.Body)
	}
}
