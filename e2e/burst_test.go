package e2e

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/harness/bench"
)

// Waiting costs no connection: 3,000 requests wait in the router's queue
// on a few HTTP/2 connections from Envoy to the control plane (not one
// each), and 20 s after the burst the control plane's goroutines and
// connections are back near their idle values.
func TestBurstLeavesNothingBehind(t *testing.T) {
	t.Parallel()
	_, urls := startFleet(t, 4, "--time-scale", "1", "--base", "5ms", "--per-step", "0", "--jitter", "0")
	r := startQueueRouter(t, urls)
	metrics := &http.Client{Timeout: 5 * time.Second}
	idleG, idleC := bench.Goroutines(metrics, r.API), bench.APIConnections(r.API)
	if idleG <= 0 {
		t.Fatalf("cannot read the control plane's goroutines (%d)", idleG)
	}

	const burst = 3000
	// One HTTP/2 connection carries the clients (Envoy's front takes
	// h2c): the race detector allows 8,128 goroutines per process, and a
	// connection each would cost two more per request in this one.
	h2c := &http.Transport{Protocols: new(http.Protocols)}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	clients := &http.Client{Transport: h2c}
	var ok, maxWaiting, maxConns atomic.Int64
	var wg sync.WaitGroup
	for range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPost, r.Front+"/v1/images/generations", strings.NewReader(`{"prompt":"q","size":"256x256"}`))
			req.Header.Set("Content-Type", "application/json")
			resp, err := clients.Do(req)
			if err == nil {
				if resp.StatusCode == http.StatusOK {
					ok.Add(1)
				}
				resp.Body.Close()
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
sample:
	for {
		select {
		case <-done:
			break sample
		case <-ctx.Done():
			t.Fatal("the burst did not finish within 3 minutes")
		case <-time.After(100 * time.Millisecond):
			maxWaiting.Store(max(maxWaiting.Load(), int64(num(queueStatus(t, r.API)["waiting"]))))
			maxConns.Store(max(maxConns.Load(), int64(bench.APIConnections(r.API))))
		}
	}
	clients.CloseIdleConnections()
	if ok.Load() != burst {
		t.Fatalf("%d of %d served", ok.Load(), burst)
	}
	if maxWaiting.Load() < burst/3 {
		t.Fatalf("at most %d waited in the router's queue: the burst did not test waiting", maxWaiting.Load())
	}
	// Two Envoy worker threads: a connection or two each, plus syncs.
	if c := maxConns.Load(); c > 16 {
		t.Fatalf("%d connections to the control plane while %d requests waited: waiting costs a connection", c, maxWaiting.Load())
	}
	// The bound: back near idle within 20 s of the burst's end.
	var g, c int
	eventually(t, 20*time.Second, "goroutines and connections back near idle", func() bool {
		g, c = bench.Goroutines(metrics, r.API), bench.APIConnections(r.API)
		return g <= idleG+50 && c <= max(idleC, 2)+6
	})
	t.Logf("idle %d goroutines, %d API connections; at the peak %d waiting on %d connections; after: %d goroutines, %d connections",
		idleG, idleC, maxWaiting.Load(), maxConns.Load(), g, c)
}
