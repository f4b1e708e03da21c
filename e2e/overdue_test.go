package e2e

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// A worker whose GPU hangs mid-burst (its /health still answers): the
// request it holds runs past the overdue limit and the worker turns
// suspect (GET /workers says so; nothing more is granted to it), and at
// the stall limit the request is answered 504 saying the worker stalled
// and the worker is quarantined (cause stalled). The rest of the burst is
// served by the other workers.
func TestHungWorkerLeavesRotation(t *testing.T) {
	t.Parallel()
	ws, urls := startFleet(t, 4, "--time-scale", "1", "--base", "100ms", "--per-step", "0", "--jitter", "0")
	r := startQueueRouter(t, urls, "--overdue-factor", "3", "--overdue-floor", "0.5", "--stall-factor", "10", "--stall-floor", "3")
	hung := ws[0]

	const burst = 200
	type answer struct {
		status int
		body   string
		at     time.Time
	}
	answers := make(chan answer, burst)
	var wg sync.WaitGroup
	start := time.Now()
	for range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := sendImage(context.Background(), r.Front, nil)
			answers <- answer{res.status, string(res.body), res.at}
		}()
	}
	eventually(t, 20*time.Second, "the burst under way", func() bool { return stats(t, ws[1]).ServedTotal >= 3 })
	if res := postJSON(t, hung.URL+"/_fake/faults", map[string]any{"hang_rate": 1}); res.Status != 200 {
		t.Fatalf("set the hang: %d %s", res.Status, res.Body)
	}
	hangAt := time.Now()

	// Suspect while its request hangs; quarantined at the stall limit.
	var sawSuspect bool
	eventually(t, 20*time.Second, "the hung worker quarantined", func() bool {
		w := workersByURL(t, r.API)[hung.URL]
		if w["suspect"] != nil {
			sawSuspect = true
		}
		return w["state"] == "quarantined"
	})
	quarantinedAt := time.Now()
	if !sawSuspect {
		t.Error("GET /workers never showed the hung worker suspect before its quarantine")
	}
	if w := workersByURL(t, r.API)[hung.URL]; !strings.Contains(w["reason"].(string), "without an answer") {
		t.Errorf("quarantine reason %q", w["reason"])
	}
	wg.Wait()
	close(answers)
	var ok, stalled int
	var last time.Time
	for a := range answers {
		switch {
		case a.status == http.StatusOK:
			ok++
		case a.status == http.StatusGatewayTimeout && strings.Contains(a.body, "stalled"):
			stalled++
		default:
			t.Errorf("answer %d %s", a.status, a.body)
		}
		if a.at.After(last) {
			last = a.at
		}
	}
	held := stats(t, hung).Hung
	t.Logf("hang at %.1f s, quarantined %.1f s later, burst ended at %.1f s; %d served, %d answered stalled, %d held by the hung worker",
		hangAt.Sub(start).Seconds(), quarantinedAt.Sub(hangAt).Seconds(), last.Sub(start).Seconds(), ok, stalled, held)
	// Its slot and at most one request granted ahead hung; nothing more
	// went to it once it was suspect.
	if held < 1 || held > 2 || stalled != held || ok != burst-held {
		t.Fatalf("%d requests hung on the worker, %d answered stalled, %d served of %d", held, stalled, ok, burst)
	}
	if !quarantinedAt.Before(last) {
		t.Fatal("the hung worker left rotation only after the burst ended")
	}
	if m := get(t, r.API+"/metrics"); !strings.Contains(string(m.Body), `cause="stalled"`) {
		t.Fatal("no stalled transition in the metrics")
	}
}

// A worker that is only slow for a while turns suspect while its request
// runs past the overdue limit, and is back in rotation by itself once the
// request answers: never quarantined, and it serves again.
func TestSlowWorkerReturnsByItself(t *testing.T) {
	t.Parallel()
	ws, urls := startFleet(t, 2, "--time-scale", "1", "--base", "100ms", "--per-step", "0", "--jitter", "0")
	r := startQueueRouter(t, urls, "--overdue-factor", "3", "--overdue-floor", "0.5", "--stall-factor", "100", "--stall-floor", "30")
	slow := ws[0]
	pair := func() {
		var wg sync.WaitGroup
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if res := sendImage(context.Background(), r.Front, nil); res.status != http.StatusOK {
					t.Errorf("request: %d %s", res.status, res.body)
				}
			}()
		}
		wg.Wait()
	}
	for range 3 {
		pair() // both workers measured
	}
	if res := postJSON(t, slow.URL+"/_fake/faults", map[string]any{"slowdown": 20}); res.Status != 200 {
		t.Fatalf("slowdown: %d %s", res.Status, res.Body)
	}
	done := make(chan struct{})
	go func() { defer close(done); pair() }() // one of the two lands on the slow worker (2 s)
	eventually(t, 10*time.Second, "the slow worker suspect", func() bool { return workersByURL(t, r.API)[slow.URL]["suspect"] != nil })
	<-done
	if res := postJSON(t, slow.URL+"/_fake/faults", map[string]any{"slowdown": 1}); res.Status != 200 {
		t.Fatalf("slowdown off: %d %s", res.Status, res.Body)
	}
	eventually(t, 10*time.Second, "the worker back in rotation", func() bool {
		w := workersByURL(t, r.API)[slow.URL]
		return w["suspect"] == nil && w["state"] == "active"
	})
	before := stats(t, slow).ServedTotal
	eventually(t, 20*time.Second, "the worker serving again", func() bool {
		pair()
		return stats(t, slow).ServedTotal > before
	})
	if w := workersByURL(t, r.API)[slow.URL]; w["state"] != "active" {
		t.Fatalf("the slow worker ended %v (%v)", w["state"], w["reason"])
	}
}
