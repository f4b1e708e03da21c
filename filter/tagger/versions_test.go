package tagger

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/diffrouter/diffusion-router/wire"
)

// TestVersionRulesAskTheQueue: a generation naming a weight version asks
// the queue even with a free slot, with its rules; a refusal (409) comes
// back as it came; with the queue's owner away it is refused, not picked;
// bad values, a repeated header, or a router without its queue: 400.
func TestVersionRulesAskTheQueue(t *testing.T) {
	for _, runner := range []string{"go", "wasm"} {
		t.Run(runner, func(t *testing.T) {
			host := startPlugin(t, runner, queueConfig)
			syncOnce(t, host, wire.PickView{Generation: 1, Workers: []wire.PickWorker{{Addr: "10.0.0.1:80", Image: true, Version: "1"}}})
			id, hs := imageRequest(t, host, [2]string{wire.HeaderMinVersion, "step-2"})
			if _, picked := header(hs, wire.HeaderPick); picked || host.GetCurrentHttpStreamAction(id) != types.ActionPause {
				t.Fatal("a request with a version rule was picked here, with a free slot")
			}
			calls := queueCalls(host, id, wire.PathQueue)
			var qr wire.QueueRequest
			if len(calls) != 1 || json.Unmarshal(calls[0].Body, &qr) != nil || qr.MinVersion != "step-2" || qr.Version != "" || qr.Check() != nil {
				t.Fatalf("queue calls %+v", calls)
			}
			host.CallOnHttpCallResponse(calls[0].CalloutID, [][2]string{{":status", "409"}}, nil, []byte(`{"error":"no worker holds weight version \"step-2\" or later"}`))
			if l := host.GetSentLocalResponse(id); l == nil || l.StatusCode != 409 || !strings.Contains(string(l.Data), "step-2") {
				t.Fatalf("refusal answered %+v", l)
			}
			id2, _ := imageRequest(t, host, [2]string{wire.HeaderPinVersion, "1"})
			calls = queueCalls(host, id2, wire.PathQueue)
			host.CallOnHttpCallResponse(calls[0].CalloutID, [][2]string{{":status", "503"}}, nil, []byte("no healthy upstream"))
			if l := host.GetSentLocalResponse(id2); l == nil || l.StatusCode != 503 {
				t.Fatalf("with the queue's owner away: %+v, want 503, not a pick", l)
			}
			for name, hdrs := range map[string][][2]string{
				"space":    {{wire.HeaderPinVersion, "a b"}},
				"too long": {{wire.HeaderMinVersion, strings.Repeat("v", wire.MaxVersionLen+1)}},
				"twice":    {{wire.HeaderPinVersion, "1"}, {wire.HeaderPinVersion, "2"}},
			} {
				id := host.InitializeHttpContext()
				host.CallOnRequestHeaders(id, append([][2]string{{":method", "POST"}, {":path", wire.PathImages}, {"content-type", "application/json"}}, hdrs...), false)
				if l := host.GetSentLocalResponse(id); l == nil || l.StatusCode != 400 {
					t.Fatalf("%s: %+v, want 400", name, l)
				}
			}
		})
	}
	host := startPlugin(t, "go", pickConfig) // least-work without the queue
	id := host.InitializeHttpContext()
	host.CallOnRequestHeaders(id, [][2]string{{":method", "POST"}, {":path", wire.PathImages}, {wire.HeaderPinVersion, "1"}}, false)
	if l := host.GetSentLocalResponse(id); l == nil || l.StatusCode != 400 || !strings.Contains(string(l.Data), "queue") {
		t.Fatalf("a version rule without the queue: %+v, want 400 saying why", l)
	}
}
