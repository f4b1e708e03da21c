package tagger

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/proxytest"

	"github.com/diffrouter/diffusion-router/wire"
)

// TestOverdueAndStalledRequests: a picked request still unanswered past
// the overdue limit makes its worker suspect (reported, no new picks);
// past the stall limit it is answered 504 and its worker reported to the
// control plane, and held back from this Envoy's picks. Native only: the rules run on the clock, and the wasm
// runner's clock is fixed.
func TestOverdueAndStalledRequests(t *testing.T) {
	cfg := []byte(strings.Replace(string(pickConfig), `"pick":true`,
		`"pick":true,"overdue_factor":0.001,"overdue_floor_ms":30,"stall_factor":0.001,"stall_floor_ms":300`, 1))
	host := startPlugin(t, "go", cfg)
	view := wire.PickView{Generation: 1, Workers: []wire.PickWorker{{Addr: "10.0.0.1:80", Image: true}, {Addr: "10.0.0.2:80", Image: true}}}
	syncOnce(t, host, view)
	stuck, hs := imageRequest(t, host)
	hung, _ := header(hs, wire.HeaderPick)
	if hung == "" {
		t.Fatal("the first request was not picked")
	}

	// Overdue: the reports say so, and the next request goes elsewhere.
	deadline := time.Now().Add(5 * time.Second)
	for {
		rep := syncOnce(t, host, view)
		if hostOverdue(rep, hung) != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no report said %s overdue within 5 s: %+v", hung, rep.Hosts)
		}
	}
	_, hs = imageRequest(t, host)
	if p, _ := header(hs, wire.HeaderPick); p == hung || p == "" {
		t.Fatalf("a request after the overdue one was picked to %q, want the other worker", p)
	}

	// Stalled: answered 504 naming the worker, reported at PathStalled.
	deadline = time.Now().Add(5 * time.Second)
	for host.GetSentLocalResponse(stuck) == nil {
		if time.Now().After(deadline) {
			t.Fatal("the stuck request was not answered within 5 s")
		}
		host.Tick()
		time.Sleep(10 * time.Millisecond) // the stall limit runs on the clock
	}
	local := host.GetSentLocalResponse(stuck)
	if local.StatusCode != 504 || !strings.Contains(string(local.Data), hung+" stalled") {
		t.Fatalf("stuck request answered %d %q", local.StatusCode, local.Data)
	}
	var report wire.StallReport
	for _, id := range []uint32{proxytest.PluginContextID, stuck} {
		for _, c := range host.GetCalloutAttributesFromContext(id) {
			if p, _ := header(c.Headers, ":path"); p == wire.PathStalled {
				if err := json.Unmarshal(c.Body, &report); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if report.Worker != hung || report.RanMs < 300 || report.Check() != nil {
		t.Fatalf("stall report %+v, want worker %s after 300 ms or more", report, hung)
	}
	if n, err := host.GetCounterMetric("diffusion_router.pick.stalled_requests"); err != nil || n != 1 {
		t.Fatalf("stalled requests counted %d (%v), want 1", n, err)
	}
	// Its request ended, but the stalled worker stays out of this
	// Envoy's picks (idle as it now looks), control plane or not.
	_, hs = imageRequest(t, host)
	if p, _ := header(hs, wire.HeaderPick); p == hung {
		t.Fatalf("a request after the stall was picked to the stalled worker %s", hung)
	}
}

func hostOverdue(rep wire.LoadReport, addr string) *wire.Overdue {
	for _, h := range rep.Hosts {
		if h.Addr == addr {
			return h.Overdue
		}
	}
	return nil
}
