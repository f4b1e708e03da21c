package tagger

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/diffrouter/diffusion-router/wire"
)

var queueConfig = []byte(strings.Replace(string(pickConfig), `"pick":true`, `"pick":true,"queue":true`, 1))

// queueCalls are the queue calls a request made.
func queueCalls(host proxytest.HostEmulator, id uint32, path string) []proxytest.HttpCalloutAttribute {
	var out []proxytest.HttpCalloutAttribute
	for _, c := range host.GetCalloutAttributesFromContext(id) {
		if p, _ := header(c.Headers, ":path"); p == path {
			out = append(out, c)
		}
	}
	return out
}

// TestQueueWaitsForItsTurn: with the queue on, a request that finds a
// free slot is picked at once; one that finds none is paused and asks the
// control plane for its turn, and goes on to the worker the answer names;
// a refusal is answered as it came; no answer from the queue picks here;
// a client that leaves while waiting is taken out of the queue.
func TestQueueWaitsForItsTurn(t *testing.T) {
	for _, runner := range []string{"go", "wasm"} {
		t.Run(runner, func(t *testing.T) {
			host := startPlugin(t, runner, queueConfig)
			one := wire.PickView{Generation: 1, Workers: []wire.PickWorker{{Addr: "10.0.0.1:80", Image: true}}}
			syncOnce(t, host, one)

			// A free slot: picked at once, priority and tenant passed on.
			id1, hs := imageRequest(t, host, [2]string{wire.HeaderTenant, "trainer-1"}, [2]string{wire.HeaderPriority, "3"})
			if p, _ := header(hs, wire.HeaderPick); p != "10.0.0.1:80" || host.GetCurrentHttpStreamAction(id1) != types.ActionContinue {
				t.Fatalf("first request: pick %q, action %v", p, host.GetCurrentHttpStreamAction(id1))
			}
			if tn, _ := header(hs, wire.HeaderTenant); tn != "trainer-1" {
				t.Fatalf("tenant header %q", tn)
			}
			if pr, _ := header(hs, wire.HeaderPriority); pr != "3" {
				t.Fatalf("priority header %q", pr)
			}

			// The only slot is taken: the next request waits for its turn.
			id2, hs := imageRequest(t, host, [2]string{wire.HeaderPriority, "7"})
			if _, picked := header(hs, wire.HeaderPick); picked || host.GetCurrentHttpStreamAction(id2) != types.ActionPause {
				t.Fatalf("second request: picked %v, action %v; want it paused", picked, host.GetCurrentHttpStreamAction(id2))
			}
			calls := queueCalls(host, id2, wire.PathQueue)
			if len(calls) != 1 {
				t.Fatalf("queue calls %+v", calls)
			}
			var qr wire.QueueRequest
			if err := json.Unmarshal(calls[0].Body, &qr); err != nil || qr.Priority != 7 || qr.Tenant != wire.DefaultTenant || qr.Cost <= 0 || qr.Check() != nil {
				t.Fatalf("queue request %s: %v", calls[0].Body, err)
			}
			host.CallOnHttpCallResponse(calls[0].CalloutID, [][2]string{{":status", "200"}}, nil, []byte(`{"worker":"10.0.0.1:80"}`))
			if p, _ := header(host.GetCurrentRequestHeaders(id2), wire.HeaderPick); p != "10.0.0.1:80" || host.GetCurrentHttpStreamAction(id2) != types.ActionContinue {
				t.Fatalf("granted request: pick %q, action %v", p, host.GetCurrentHttpStreamAction(id2))
			}
			if ms, ok := header(host.GetCurrentRequestHeaders(id2), wire.HeaderQueueMs); !ok || ms == "" || ms[0] == '-' {
				t.Fatalf("granted request's queue wait header %q", ms)
			}
			// Both count on the worker now.
			rep := syncOnce(t, host, one)
			if len(rep.Hosts) != 1 || rep.Hosts[0].Requests != 2 {
				t.Fatalf("report after a pick and a grant: %+v", rep.Hosts)
			}

			// A refusal comes back as it came, with its Retry-After.
			id3, _ := imageRequest(t, host)
			calls = queueCalls(host, id3, wire.PathQueue)
			host.CallOnHttpCallResponse(calls[0].CalloutID, [][2]string{{":status", "429"}, {"retry-after", "4"}}, nil,
				[]byte(`{"error":"the router's queue is full (--max-queued)"}`))
			local := host.GetSentLocalResponse(id3)
			if local == nil || local.StatusCode != 429 || !strings.Contains(string(local.Data), "--max-queued") {
				t.Fatalf("refused request answered %+v", local)
			}
			if ra, _ := header(local.Headers, "retry-after"); ra != "4" {
				t.Fatalf("refusal's retry-after %q", ra)
			}

			// The queue's owner is away: picked here, at once.
			id4, _ := imageRequest(t, host)
			calls = queueCalls(host, id4, wire.PathQueue)
			host.CallOnHttpCallResponse(calls[0].CalloutID, [][2]string{{":status", "503"}}, nil, []byte("no healthy upstream"))
			if p, _ := header(host.GetCurrentRequestHeaders(id4), wire.HeaderPick); p != "10.0.0.1:80" || host.GetCurrentHttpStreamAction(id4) != types.ActionContinue {
				t.Fatalf("request without an answer from the queue: pick %q, action %v", p, host.GetCurrentHttpStreamAction(id4))
			}

			// A client that leaves while waiting is taken out.
			id5, _ := imageRequest(t, host, [2]string{wire.HeaderTenant, "eval"})
			calls = queueCalls(host, id5, wire.PathQueue)
			var waiting wire.QueueRequest
			_ = json.Unmarshal(calls[0].Body, &waiting)
			host.CompleteHttpContext(id5)
			cancels := queueCalls(host, id5, wire.PathQueueCancel)
			var c wire.QueueCancel
			if len(cancels) != 1 || json.Unmarshal(cancels[0].Body, &c) != nil || c.Ticket != waiting.Ticket || c.Node != waiting.Node {
				t.Fatalf("cancel calls %+v for %+v", cancels, waiting)
			}
		})
	}
}

// TestQueueRefusesBadHeaders: a bad priority or tenant never reaches the
// queue or a worker: 400.
func TestQueueRefusesBadHeaders(t *testing.T) {
	for _, runner := range []string{"go", "wasm"} {
		t.Run(runner, func(t *testing.T) {
			host := startPlugin(t, runner, queueConfig)
			syncOnce(t, host, wire.PickView{Generation: 1, Workers: []wire.PickWorker{{Addr: "10.0.0.1:80", Image: true}}})
			for _, h := range [][][2]string{
				{{wire.HeaderPriority, "soon"}}, {{wire.HeaderPriority, "1001"}}, {{wire.HeaderTenant, "two words"}},
				// Twice, even with one good value: which counts is not
				// for Envoy's order to decide.
				{{wire.HeaderPriority, "1"}, {wire.HeaderPriority, "1000"}},
				{{wire.HeaderTenant, "a"}, {"X-Diffusion-Tenant", "b"}},
			} {
				id := host.InitializeHttpContext()
				host.CallOnRequestHeaders(id, append([][2]string{{":method", "POST"}, {":path", wire.PathImages}, {"content-type", "application/json"}}, h...), false)
				if local := host.GetSentLocalResponse(id); local == nil || local.StatusCode != 400 {
					t.Fatalf("headers %v answered %+v, want 400", h, local)
				}
				if calls := queueCalls(host, id, wire.PathQueue); len(calls) != 0 {
					t.Fatalf("headers %v reached the queue: %+v", h, calls)
				}
			}
		})
	}
}

// TestTenantNaming: the tenant is the header (unless the operator ignores
// it), else the body's "user" only when the operator trusts it, else the
// default.
func TestTenantNaming(t *testing.T) {
	withFlag := func(flag string) []byte {
		return []byte(strings.Replace(string(queueConfig), `"queue":true`, `"queue":true,"`+flag+`":true`, 1))
	}
	for _, tc := range []struct {
		name   string
		config []byte
		header string
		want   string
	}{
		{"body user not trusted by default", queueConfig, "", wire.DefaultTenant},
		{"header names it", queueConfig, "team-a", "team-a"},
		{"body user trusted", withFlag("trust_body_user"), "", "u-1"},
		{"header over a trusted body", withFlag("trust_body_user"), "team-a", "team-a"},
		{"header ignored", withFlag("ignore_client_tenant"), "team-a", wire.DefaultTenant},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := startPlugin(t, "go", tc.config)
			syncOnce(t, host, wire.PickView{Generation: 1, Workers: []wire.PickWorker{{Addr: "10.0.0.1:80", Image: true}}})
			id := host.InitializeHttpContext()
			hs := [][2]string{{":method", "POST"}, {":path", wire.PathImages}, {"content-type", "application/json"}}
			if tc.header != "" {
				hs = append(hs, [2]string{wire.HeaderTenant, tc.header})
			}
			host.CallOnRequestHeaders(id, hs, false)
			host.CallOnRequestBody(id, []byte(`{"prompt":"x","user":"u-1"}`), true)
			if got, _ := header(host.GetCurrentRequestHeaders(id), wire.HeaderTenant); got != tc.want {
				t.Fatalf("tenant %q, want %q", got, tc.want)
			}
		})
	}
}

// TestFreedSlotReportSaysWhere: while requests wait in the router's queue,
// a request's end is reported at once and names the worker it left, so the
// queue plans that worker's next grant from the real end.
func TestFreedSlotReportSaysWhere(t *testing.T) {
	for _, runner := range []string{"go", "wasm"} {
		t.Run(runner, func(t *testing.T) {
			host := startPlugin(t, runner, queueConfig)
			view := wire.PickView{Generation: 1, Workers: []wire.PickWorker{{Addr: "10.0.0.1:80", Image: true}, {Addr: "10.0.0.2:80", Image: true}}}
			syncOnce(t, host, view)
			id, hs := imageRequest(t, host)
			addr, _ := header(hs, wire.HeaderPick)
			if addr == "" {
				t.Fatal("the request was not picked")
			}
			// Then requests queue up behind it.
			view.Generation, view.Queued = 2, 3
			syncOnce(t, host, view)
			if err := host.SetProperty([]string{"upstream", "address"}, []byte(addr)); err != nil {
				t.Fatal(err)
			}
			if got := queueCalls(host, id, wire.PathFilterSync); len(got) != 0 {
				t.Fatalf("reported before the request ended: %+v", got)
			}
			host.CallOnResponseHeaders(id, [][2]string{{":status", "200"}, {"content-type", "application/json"}}, false)
			host.CompleteHttpContext(id)
			reports := queueCalls(host, id, wire.PathFilterSync)
			if len(reports) != 1 {
				t.Fatalf("free-slot reports %+v, want 1", reports)
			}
			var rep wire.LoadReport
			if err := json.Unmarshal(reports[0].Body, &rep); err != nil || len(rep.Freed) != 1 || rep.Freed[0] != addr {
				t.Fatalf("free-slot report %s (%v): want freed [%s]", reports[0].Body, err, addr)
			}
		})
	}
}

// TestUnreadBodyWaitsWithItsRequest: a request whose body the filter does
// not read (a multipart image edit) waits for its turn with its body held,
// instead of going on to a worker while still queued; one announced too
// large to hold is picked at once, as before the queue, and so is a
// multipart video create (the openai SDK's: waiting, its create would not
// answer until a slot frees).
func TestUnreadBodyWaitsWithItsRequest(t *testing.T) {
	for _, runner := range []string{"go", "wasm"} {
		t.Run(runner, func(t *testing.T) {
			host := startPlugin(t, runner, queueConfig)
			one := wire.PickView{Generation: 1, Workers: []wire.PickWorker{{Addr: "10.0.0.9:80", Image: true, Video: true}}}
			syncOnce(t, host, one)
			multipart := func(path string, length int) (uint32, types.Action) {
				id := host.InitializeHttpContext()
				return id, host.CallOnRequestHeaders(id, [][2]string{{":method", "POST"}, {":path", path},
					{"content-type", "multipart/form-data; boundary=x"}, {"content-length", strconv.Itoa(length)}}, false)
			}
			first, _ := multipart(wire.PathImageEdits, 300) // takes the only slot
			if p, _ := header(host.GetCurrentRequestHeaders(first), wire.HeaderPick); p != "10.0.0.9:80" {
				t.Fatalf("first edit picked %q", p)
			}
			second, action := multipart(wire.PathImageEdits, 300)
			if action != types.ActionPause || len(queueCalls(host, second, wire.PathQueue)) != 1 {
				t.Fatalf("second edit: action %v, queue calls %d; want it waiting", action, len(queueCalls(host, second, wire.PathQueue)))
			}
			if a := host.CallOnRequestBody(second, []byte("--x\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nfox\r\n--x--\r\n"), true); a != types.ActionPause {
				t.Fatalf("the waiting edit's body: %v, want it held (paused)", a)
			}
			calls := queueCalls(host, second, wire.PathQueue)
			host.CallOnHttpCallResponse(calls[0].CalloutID, [][2]string{{":status", "200"}}, nil, []byte(`{"worker":"10.0.0.9:80"}`))
			if p, _ := header(host.GetCurrentRequestHeaders(second), wire.HeaderPick); p != "10.0.0.9:80" || host.GetCurrentHttpStreamAction(second) != types.ActionContinue {
				t.Fatalf("granted edit: pick %q, action %v", p, host.GetCurrentHttpStreamAction(second))
			}
			for _, tc := range []struct {
				name, path string
				length     int
			}{{"an edit too large to hold", wire.PathImageEdits, wire.MaxHeldBytes + 1}, {"a multipart video create", wire.PathVideos, 300}} {
				id, action := multipart(tc.path, tc.length)
				if action != types.ActionContinue || len(queueCalls(host, id, wire.PathQueue)) != 0 {
					t.Fatalf("%s: action %v, queue calls %d; want it sent at once", tc.name, action, len(queueCalls(host, id, wire.PathQueue)))
				}
				if p, _ := header(host.GetCurrentRequestHeaders(id), wire.HeaderPick); p != "10.0.0.9:80" {
					t.Fatalf("%s: picked %q", tc.name, p)
				}
			}
		})
	}
}
