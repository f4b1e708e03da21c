package tagger

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/diffrouter/diffusion-router/jobid"
	"github.com/diffrouter/diffusion-router/wire"
)

var heldConfig = []byte(strings.Replace(string(queueConfig), `"queue":true`, `"queue":true,"hold_jobs":true`, 1))

// TestHeldJobsGoToTheControlPlane: with held jobs, a video create that
// finds no free slot goes on (not paused) to the control plane with its
// signed ask, JSON or multipart; the control plane's forward binds a held
// job to its granted worker, busy or not, and the answer names this
// Envoy; a forged forward is refused; calls about held ids and plain job
// lists go to the control plane, lists it forwards do not.
func TestHeldJobsGoToTheControlPlane(t *testing.T) {
	for _, runner := range []string{"go", "wasm"} {
		t.Run(runner, func(t *testing.T) {
			host := startPlugin(t, runner, heldConfig)
			syncOnce(t, host, wire.PickView{Generation: 1, Workers: []wire.PickWorker{{Addr: "10.0.0.9:80", Video: true}}})
			video := func(extra ...[2]string) uint32 {
				id := host.InitializeHttpContext()
				hs := append([][2]string{{":method", "POST"}, {":path", wire.PathVideos}, {"content-type", "application/json"}}, extra...)
				host.CallOnRequestHeaders(id, hs, false)
				host.CallOnRequestBody(id, []byte(`{"prompt":"x","num_frames":16}`), true)
				return id
			}
			first := video()
			if p, _ := header(host.GetCurrentRequestHeaders(first), wire.HeaderPick); p != "10.0.0.9:80" {
				t.Fatalf("first create picked %q", p)
			}
			second := video([2]string{wire.HeaderPriority, "5"})
			hs := host.GetCurrentRequestHeaders(second)
			if held, _ := header(hs, wire.HeaderHeld); held != "create" || host.GetCurrentHttpStreamAction(second) != types.ActionContinue {
				t.Fatalf("second create: held %q, action %v; want it sent on to the control plane", held, host.GetCurrentHttpStreamAction(second))
			}
			if _, picked := header(hs, wire.HeaderPick); picked || len(queueCalls(host, second, wire.PathQueue)) != 0 {
				t.Fatal("a held create was picked or asked the queue itself")
			}
			raw, _ := header(hs, wire.HeaderHeldAsk)
			body, err := base64.RawURLEncoding.DecodeString(raw)
			var ask wire.QueueRequest
			if err != nil || json.Unmarshal(body, &ask) != nil || ask.Check() != nil || ask.Priority != 5 || len(ask.Hosts) != 1 || ask.Hosts[0].Requests != 1 {
				t.Fatalf("held ask %s: %v", body, err)
			}
			at, _ := header(hs, wire.HeaderSyncTime)
			sig, _ := header(hs, wire.HeaderSyncSignature)
			// The filter's clock (fixed under wazero) signs; tokens below
			// are made on it too.
			filterMs, _ := strconv.ParseInt(at, 10, 64)
			if err := wire.CheckSyncSignature([]byte(testSecret), at, sig, body, time.UnixMilli(filterMs)); err != nil {
				t.Fatalf("held ask signature: %v", err)
			}

			// multipart: held at its headers, the body not waited for.
			mp := host.InitializeHttpContext()
			if a := host.CallOnRequestHeaders(mp, [][2]string{{":method", "POST"}, {":path", wire.PathVideos},
				{"content-type", "multipart/form-data; boundary=x"}, {"content-length", strconv.Itoa(8 << 20)}}, false); a != types.ActionContinue {
				t.Fatalf("multipart create: %v, want it sent on", a)
			}
			if held, _ := header(host.GetCurrentRequestHeaders(mp), wire.HeaderHeld); held != "create" {
				t.Fatalf("multipart create held %q", held)
			}

			// The control plane sends a held job: bound to its worker.
			token := wire.ForwardToken([]byte(testSecret), filterMs, wire.Forward{Worker: "10.0.0.9:80", WaitedMs: 1200})
			fwd := video([2]string{wire.HeaderForward, token})
			hs = host.GetCurrentRequestHeaders(fwd)
			if p, _ := header(hs, wire.HeaderPick); p != "10.0.0.9:80" {
				t.Fatalf("forwarded create picked %q, want its granted worker", p)
			}
			if _, held := header(hs, wire.HeaderHeld); held {
				t.Fatal("a forwarded create was held again")
			}
			if ms, _ := header(hs, wire.HeaderQueueMs); ms != "1200" {
				t.Fatalf("forwarded create's queue wait %q, want the held job's 1200 ms", ms)
			}
			if _, left := header(hs, wire.HeaderForward); left {
				t.Fatal("the forward token went on to the worker")
			}
			host.CallOnResponseHeaders(fwd, [][2]string{{":status", "200"}, {"content-type", "text/plain"}}, false)
			if n, _ := header(host.GetCurrentResponseHeaders(fwd), wire.HeaderNode); n == "" {
				t.Fatal("the forwarded create's answer does not name its Envoy")
			}
			forged := host.InitializeHttpContext()
			host.CallOnRequestHeaders(forged, [][2]string{{":method", "POST"}, {":path", wire.PathVideos},
				{wire.HeaderForward, strings.Replace(token, "10.0.0.9", "10.0.0.8", 1)}}, false)
			if l := host.GetSentLocalResponse(forged); l == nil || l.StatusCode != 403 {
				t.Fatalf("forged forward answered %+v, want 403", l)
			}

			// Calls about held ids and plain lists go to the control plane.
			heldID := jobid.NewSigner([]byte(testSecret)).WrapRef(jobid.Ref{ID: "video_1", Worker: wire.HeldWorker})
			for _, tc := range []struct {
				name, path, want string
				extra            [][2]string
			}{
				{"poll", wire.PathVideos + "/" + heldID, "job", nil},
				{"content", wire.PathVideos + "/" + heldID + "/content", "job", nil},
				{"list", wire.PathVideos + "?limit=5", "list", nil},
				{"list after a held job", wire.PathVideos + "?after=" + heldID, "list", nil},
				{"a forwarded list", wire.PathVideos, "", [][2]string{{wire.HeaderForward, wire.ForwardToken([]byte(testSecret), filterMs, wire.Forward{})}}},
			} {
				id := host.InitializeHttpContext()
				host.CallOnRequestHeaders(id, append([][2]string{{":method", "GET"}, {":path", tc.path}}, tc.extra...), true)
				hs := host.GetCurrentRequestHeaders(id)
				held, _ := header(hs, wire.HeaderHeld)
				if held != tc.want {
					t.Fatalf("%s: held %q, want %q", tc.name, held, tc.want)
				}
				if _, target := header(hs, wire.HeaderTarget); target && tc.want != "" {
					t.Fatalf("%s: pinned to a worker", tc.name)
				}
			}
		})
	}
}
