package tagger

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/diffrouter/diffusion-router/wire"
)

var pickConfig = []byte(`{"secret":"` + testSecret + `","max_body_bytes":1024,"defaults":{"steps":50,"width":1024,"height":1024,"video_frames":16},"pick":true,"sync_cluster":"registry"}`)

// pickHost starts the plugin with least-work routing on.
func pickHost(t *testing.T, runner string) proxytest.HostEmulator {
	t.Helper()
	host := startPlugin(t, runner, pickConfig)
	if got := host.GetTickPeriod(); got != uint32(wire.SyncInterval.Milliseconds()) {
		t.Fatalf("tick period = %d ms", got)
	}
	return host
}

// startPlugin starts the plugin with cfg as Envoy "envoy-a"; it is reset
// when the test ends.
func startPlugin(t *testing.T, runner string, cfg []byte) proxytest.HostEmulator {
	t.Helper()
	host, reset := proxytest.NewHostEmulator(proxytest.NewEmulatorOption().WithVMContext(newVM(t, runner)).
		WithPluginConfiguration(cfg).WithProperty([]string{"node", "id"}, []byte("envoy-a")))
	t.Cleanup(reset)
	if st := host.StartPlugin(); st != types.OnPluginStartStatusOK {
		t.Fatalf("plugin start = %v", st)
	}
	return host
}

// speedSamples is how many samples the filter learned a worker's speed
// from, as its stat says (refreshed at each sync).
func speedSamples(t *testing.T, host proxytest.HostEmulator, addr string) int64 {
	t.Helper()
	v, err := host.GetGaugeMetric("diffusion_router.pick.speed_samples." + statName(addr))
	if err != nil {
		return 0 // never exported: nothing learned
	}
	return int64(v)
}

// syncOnce ticks until the plugin posts a load report (the sync lease
// lets one through per interval), answers it with view, and returns the
// report.
func syncOnce(t *testing.T, host proxytest.HostEmulator, view wire.PickView) wire.LoadReport {
	t.Helper()
	call := nextSyncCall(t, host)
	if call.Upstream != "registry" {
		t.Fatalf("sync went to cluster %q", call.Upstream)
	}
	if p, _ := header(call.Headers, ":path"); p != wire.PathFilterSync {
		t.Fatalf("sync path %q", p)
	}
	at, _ := header(call.Headers, wire.HeaderSyncTime)
	sig, _ := header(call.Headers, wire.HeaderSyncSignature)
	// The signing time is not compared with this clock: the wasm
	// runner's clock is fixed. wire's tests cover the time window.
	ms, _ := strconv.ParseInt(at, 10, 64)
	if err := wire.CheckSyncSignature([]byte(testSecret), at, sig, call.Body, time.UnixMilli(ms)); err != nil {
		t.Fatalf("sync signature: %v", err)
	}
	var rep wire.LoadReport
	if err := json.Unmarshal(call.Body, &rep); err != nil {
		t.Fatalf("report %q: %v", call.Body, err)
	}
	body, _ := json.Marshal(view)
	host.CallOnHttpCallResponse(call.CalloutID, [][2]string{{":status", "200"}}, nil, body)
	return rep
}

// nextSyncCall ticks until the plugin makes one more sync call, and
// returns it.
func nextSyncCall(t *testing.T, host proxytest.HostEmulator) proxytest.HttpCalloutAttribute {
	t.Helper()
	before := len(host.GetCalloutAttributesFromContext(proxytest.PluginContextID))
	deadline := time.Now().Add(5 * time.Second)
	for len(host.GetCalloutAttributesFromContext(proxytest.PluginContextID)) == before {
		if time.Now().After(deadline) {
			t.Fatal("no sync call within 5 s of ticks")
		}
		host.Tick()
		time.Sleep(5 * time.Millisecond) // the tick's own pace; the loop waits for the call itself
	}
	calls := host.GetCalloutAttributesFromContext(proxytest.PluginContextID)
	return calls[len(calls)-1]
}

func imageRequest(t *testing.T, host proxytest.HostEmulator, extra ...[2]string) (uint32, [][2]string) {
	t.Helper()
	id := host.InitializeHttpContext()
	hs := append([][2]string{{":method", "POST"}, {":path", wire.PathImages}, {"content-type", "application/json"}}, extra...)
	if a := host.CallOnRequestHeaders(id, hs, false); a != types.ActionPause {
		t.Fatalf("headers = %v, want the body held", a)
	}
	host.CallOnRequestBody(id, []byte(`{"prompt":"x","num_inference_steps":50,"size":"1024x1024"}`), true)
	return id, host.GetCurrentRequestHeaders(id)
}

// TestLeastWorkPicks: with a view, each generation names the worker with
// the least outstanding work (and a second choice), the work leaves the
// worker when the answer starts or the stream ends, and the next report
// shows it back at zero.
func TestLeastWorkPicks(t *testing.T) {
	for _, runner := range []string{"go", "wasm"} {
		t.Run(runner, func(t *testing.T) {
			host := pickHost(t, runner)
			// Without a view the filter names no worker: Envoy's policy routes.
			_, hs := imageRequest(t, host)
			if v, ok := header(hs, wire.HeaderPick); ok {
				t.Fatalf("picked %q without a view", v)
			}
			rep := syncOnce(t, host, wire.PickView{Generation: 3, Workers: []wire.PickWorker{
				{Addr: "10.0.0.1:80", Image: true}, {Addr: "10.0.0.2:80", Image: true}, {Addr: "10.0.0.3:80", Video: true}}})
			if !strings.HasPrefix(rep.Node, "envoy-a-") || len(rep.Node) != len("envoy-a-")+12 || rep.Generation != 0 {
				t.Fatalf("first report = %+v", rep)
			}

			// A client's own pick header is not trusted.
			id1, hs1 := imageRequest(t, host, [2]string{wire.HeaderPick, "10.0.0.3:80"})
			first, _ := header(hs1, wire.HeaderPick)
			retry, _ := header(hs1, wire.HeaderPickRetry)
			if first == "10.0.0.3:80" || first == "" || retry == "" || retry == first || retry == "10.0.0.3:80" {
				t.Fatalf("first request: pick %q, retry %q (video worker or client's choice leaked)", first, retry)
			}
			id2, hs2 := imageRequest(t, host)
			second, _ := header(hs2, wire.HeaderPick)
			if second == first || second == "" {
				t.Fatalf("second request went to %q too, beside one in flight", second)
			}
			node := rep.Node
			rep = syncOnce(t, host, wire.PickView{Generation: 4, Workers: []wire.PickWorker{{Addr: "10.0.0.1:80", Image: true}, {Addr: "10.0.0.2:80", Image: true}}})
			if rep.Node != node {
				t.Fatalf("the Envoy's name changed from %q to %q", node, rep.Node)
			}
			if rep.Generation != 3 {
				t.Fatalf("report generation %d, want the view's 3", rep.Generation)
			}
			work := map[string]int64{}
			for _, h := range rep.Hosts {
				work[h.Addr] = h.Work
			}
			if work[first] != 50 || work[second] != 50 {
				t.Fatalf("reported work %v, want 50 on each", work)
			}

			// Request 1 is answered by its worker: released, speed learned.
			if err := host.SetProperty([]string{"upstream", "address"}, []byte(first)); err != nil {
				t.Fatal(err)
			}
			host.CallOnResponseHeaders(id1, [][2]string{{":status", "200"}, {"content-type", "image/png"}}, false)
			host.CompleteHttpContext(id1)
			// Request 2's client goes away: released at the stream's end.
			host.CompleteHttpContext(id2)

			rep = syncOnce(t, host, wire.PickView{Generation: 4, Workers: []wire.PickWorker{{Addr: "10.0.0.1:80", Image: true}, {Addr: "10.0.0.2:80", Image: true}}})
			// A report lists only workers with work counted.
			if len(rep.Hosts) != 0 {
				t.Fatalf("after both ended, the report lists %+v", rep.Hosts)
			}
			if n := speedSamples(t, host, first); n != 1 {
				t.Fatalf("answered worker learned %d samples, want 1", n)
			}
			if n := speedSamples(t, host, second); n != 0 {
				t.Fatalf("abandoned request taught speed (%d samples)", n)
			}
			if rep.Generation != 4 {
				t.Fatalf("report generation %d, want 4", rep.Generation)
			}
		})
	}
}

// TestLeastWorkPicksNewGenerations: a job poll is pinned, never picked; a
// multipart edit (its body not read) is picked at the task's default cost.
func TestLeastWorkPicksNewGenerations(t *testing.T) {
	for _, runner := range []string{"go", "wasm"} {
		t.Run(runner, func(t *testing.T) {
			host := pickHost(t, runner)
			syncOnce(t, host, wire.PickView{Generation: 1, Workers: []wire.PickWorker{{Addr: "10.0.0.1:80", Image: true}, {Addr: "10.0.0.2:80", Image: true}}})
			id := host.InitializeHttpContext()
			host.CallOnRequestHeaders(id, [][2]string{{":method", "GET"}, {":path", "/v1/videos"}}, true)
			if v, ok := header(host.GetCurrentRequestHeaders(id), wire.HeaderPick); ok {
				t.Fatalf("a GET was picked: %q", v)
			}
			id = host.InitializeHttpContext()
			host.CallOnRequestHeaders(id, [][2]string{{":method", "POST"}, {":path", wire.PathImageEdits}, {"content-type", "multipart/form-data; boundary=x"}}, false)
			if v, ok := header(host.GetCurrentRequestHeaders(id), wire.HeaderPick); !ok || v == "" {
				t.Fatal("a multipart edit was not picked")
			}
			host.CompleteHttpContext(id)
		})
	}
}

// TestLeastWorkSyncFailure: a failed sync is counted and keeps the old view.
func TestLeastWorkSyncFailure(t *testing.T) {
	host := pickHost(t, "go")
	syncOnce(t, host, wire.PickView{Generation: 1, Workers: []wire.PickWorker{{Addr: "10.0.0.1:80"}}})
	host.CallOnHttpCallResponse(nextSyncCall(t, host).CalloutID, [][2]string{{":status", "503"}}, nil, []byte(`{"error":"down"}`))
	if v, err := host.GetCounterMetric("diffusion_router.pick.sync_errors"); err != nil || v != 1 {
		t.Fatalf("sync errors = %d, %v", v, err)
	}
	_, hs := imageRequest(t, host)
	if v, _ := header(hs, wire.HeaderPick); v != "10.0.0.1:80" {
		t.Fatalf("after a failed sync the last view is gone: pick %q", v)
	}
}

// BenchmarkGenerationRequestPicking is BenchmarkGenerationRequest with
// least-work routing on, by fleet size: the pick (shared table read,
// choose, compare-and-swap) and the release at the answer. Its cost per
// request must not grow with the fleet.
func BenchmarkGenerationRequestPicking(b *testing.B) {
	for _, n := range []int{8, 100, 300, 1000} {
		b.Run(strconv.Itoa(n)+"workers", func(b *testing.B) { benchmarkPicking(b, n) })
	}
}

func benchmarkPicking(b *testing.B, workers int) {
	host, reset := proxytest.NewHostEmulator(proxytest.NewEmulatorOption().WithVMContext(NewVMContext()).
		WithPluginConfiguration(pickConfig).WithProperty([]string{"node", "id"}, []byte("bench")))
	defer reset()
	if st := host.StartPlugin(); st != types.OnPluginStartStatusOK {
		b.Fatalf("start = %v", st)
	}
	var view wire.PickView
	for i := range workers {
		view.Workers = append(view.Workers, wire.PickWorker{Addr: fmt.Sprintf("10.0.%d.%d:80", i/250, i%250+1), Image: true, Models: []string{"flux"}})
	}
	vb, _ := json.Marshal(view)
	// refresh syncs: a view lives a second, and a benchmark runs longer.
	refresh := func() {
		before := len(host.GetCalloutAttributesFromContext(proxytest.PluginContextID))
		host.Tick()
		calls := host.GetCalloutAttributesFromContext(proxytest.PluginContextID)
		if len(calls) != before+1 {
			b.Fatalf("no sync call on a tick")
		}
		host.CallOnHttpCallResponse(calls[len(calls)-1].CalloutID, [][2]string{{":status", "200"}}, nil, vb)
	}
	refresh()
	lastSync := time.Now()
	body, reqHeaders, respHeaders := generationFixture()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if time.Since(lastSync) > wire.ViewTTL/2 {
			b.StopTimer()
			refresh()
			lastSync = time.Now()
			b.StartTimer()
		}
		id := host.InitializeHttpContext()
		host.CallOnRequestHeaders(id, reqHeaders, false)
		host.CallOnRequestBody(id, body, true)
		if _, ok := header(host.GetCurrentRequestHeaders(id), wire.HeaderPick); !ok {
			un, _ := host.GetCounterMetric("diffusion_router.pick.unpicked")
			b.Fatalf("not picked (unpicked %d): %v", un, host.GetCurrentRequestHeaders(id))
		}
		host.CallOnResponseHeaders(id, respHeaders, false)
		host.CompleteHttpContext(id)
	}
}

// TestLeastWorkVideoJobs: a video job's cost stays on its worker after the
// create call answered, until a poll shows the job ended, or after a
// delete until the worker says it is idle. The create call teaches no
// speed; the job's own GPU time (inference_time_s, once completed) does.
func TestLeastWorkVideoJobs(t *testing.T) {
	for _, runner := range []string{"go", "wasm"} {
		t.Run(runner, func(t *testing.T) {
			h := newVideoHost(t, runner)
			a1, j1 := h.create("video_1")
			a2, j2 := h.create("video_2")
			if a1 == a2 {
				t.Fatalf("the second job went to %s too, where the first still runs", a2)
			}
			if w := h.work(); w[a1] != [2]int64{videoCost, 1} || w[a2] != [2]int64{videoCost, 1} {
				t.Fatalf("after two creates: %v, want %d and one request on each", w, videoCost)
			}
			if n1, n2 := speedSamples(t, h.host, a1), speedSamples(t, h.host, a2); n1 != 0 || n2 != 0 {
				t.Fatalf("video creates taught speed (%d and %d samples)", n1, n2)
			}
			h.call("GET", j1, "200", `{"id":"video_1","object":"video","status":"in_progress","progress":50}`)
			if w := h.work(); w[a1] != [2]int64{videoCost, 1} {
				t.Fatalf("a running job stopped counting: %v", w)
			}
			h.call("GET", j1, "200", `{"id":"video_1","object":"video","status":"completed","progress":100,"inference_time_s":2.5}`)
			h.call("DELETE", j2, "200", `{"id":"video_2","object":"video","deleted":true}`)
			rep := syncOnce(t, h.host, h.view)
			// sglang forgets a deleted job but keeps running it: it
			// counts until the worker says it is idle (or its expected
			// time passes).
			if w := workOf(rep); w[a1] != [2]int64{} || w[a2] != [2]int64{videoCost, 1} {
				t.Fatalf("after a completed poll and a delete: %v, want only the deleted job", w)
			}
			idle := h.view
			idle.Workers = slices.Clone(h.view.Workers)
			for i := range idle.Workers {
				if idle.Workers[i].Addr == a2 {
					idle.Workers[i].IdleAt = time.Now().Add(2 * time.Second).UnixMicro()
				}
			}
			syncOnce(t, h.host, idle)
			if w := h.work(); w[a2] != [2]int64{} {
				t.Fatalf("the worker said it was idle, yet its deleted job counts: %v", w)
			}
			if n1, n2 := speedSamples(t, h.host, a1), speedSamples(t, h.host, a2); n1 != 1 || n2 != 0 {
				t.Fatalf("speed samples %d and %d, want one from the completed job's GPU time only", n1, n2)
			}
			if len(rep.Completions) != 1 || !rep.Completions[0].GPU || rep.Completions[0].Addr != a1 ||
				rep.Completions[0].Cost != videoCost || rep.Completions[0].Done-rep.Completions[0].Sent != 2_500_000 {
				t.Fatalf("report's completions %+v, want job 1's 2.5 s of GPU time", rep.Completions)
			}
			if len(rep.Finished) != 0 {
				t.Fatalf("relayed jobs this Envoy counted itself: %v", rep.Finished)
			}
		})
	}
}

// TestLeastWorkVideoJobsAcrossEnvoys: a job another Envoy saw end stops
// counting here and teaches its GPU time; a job a retry took to the other
// worker counts there; polls of jobs this Envoy no longer counts are
// relayed to the others.
func TestLeastWorkVideoJobsAcrossEnvoys(t *testing.T) {
	for _, runner := range []string{"go", "wasm"} {
		t.Run(runner, func(t *testing.T) {
			h := newVideoHost(t, runner)
			a3, _ := h.create("video_3")
			h.work()
			before := speedSamples(t, h.host, a3)
			relayed := h.view
			relayed.Finished = []wire.EndedJob{{ID: "video_3", GPUMs: 1500}}
			syncOnce(t, h.host, relayed)
			rep := syncOnce(t, h.host, h.view)
			if w := workOf(rep); w[a3] != [2]int64{} {
				t.Fatalf("a job another Envoy saw end still counts: %v", w)
			}
			if speedSamples(t, h.host, a3) != before+1 || len(rep.Completions) != 1 || !rep.Completions[0].GPU || rep.Completions[0].Addr != a3 ||
				rep.Completions[0].Done-rep.Completions[0].Sent != 1_500_000 {
				t.Fatalf("relayed GPU time: samples %d (was %d), completions %+v; want one more, of 1.5 s", speedSamples(t, h.host, a3), before, rep.Completions)
			}
			// The picked worker refused the connection; a retry took the
			// job to the other one.
			other := func(picked string) string {
				if picked == "10.0.0.1:80" {
					return "10.0.0.2:80"
				}
				return "10.0.0.1:80"
			}
			a4, j4 := h.createVia("video_4", other)
			if w := h.work(); w[a4] != [2]int64{videoCost, 1} || w[other(a4)] != [2]int64{} {
				t.Fatalf("after a create retried onto %s: %v, want the job counted there only", a4, w)
			}
			h.call("GET", j4, "200", `{"id":"video_4","object":"video","status":"completed","progress":100}`)
			if w := h.work(); w[a4] != [2]int64{} || w[other(a4)] != [2]int64{} {
				t.Fatalf("after the retried job completed: %v, want nothing", w)
			}
			// Jobs that ended here once (no relay then) and are polled
			// again, as if another Envoy counted them: the next report
			// relays them, a completed one with its GPU time.
			_, j1 := h.create("video_1")
			_, j2 := h.create("video_2")
			h.call("GET", j1, "200", `{"id":"video_1","object":"video","status":"completed","progress":100}`)
			h.call("GET", j2, "200", `{"id":"video_2","object":"video","status":"failed"}`)
			if rep := syncOnce(t, h.host, h.view); len(rep.Finished) != 0 {
				t.Fatalf("relayed jobs this Envoy counted itself: %v", rep.Finished)
			}
			h.call("GET", j1, "200", `{"id":"video_1","object":"video","status":"completed","progress":100,"inference_time_s":3}`)
			h.call("GET", j2, "200", `{"id":"video_2","object":"video","status":"failed"}`)
			if rep := syncOnce(t, h.host, h.view); !reflect.DeepEqual(rep.Finished, []wire.EndedJob{{ID: "video_1", GPUMs: 3000}, {ID: "video_2"}}) {
				t.Fatalf("report relays %v, want video_1 with 3 s and video_2", rep.Finished)
			}
		})
	}
}

// videoCost is the cost of the video jobs videoHost creates.
const videoCost = 10 * 512 * 512 * 16 >> 20

// videoHost drives video jobs through a picking plugin with two video
// workers.
type videoHost struct {
	t    *testing.T
	host proxytest.HostEmulator
	view wire.PickView
}

func newVideoHost(t *testing.T, runner string) *videoHost {
	h := &videoHost{t: t, host: pickHost(t, runner),
		view: wire.PickView{Generation: 1, Workers: []wire.PickWorker{{Addr: "10.0.0.1:80", Video: true}, {Addr: "10.0.0.2:80", Video: true}}}}
	syncOnce(t, h.host, h.view)
	return h
}

// createVia makes a job on the worker that answers (by maps the picked
// worker to it), and returns that worker and the job's id as the client
// sees it.
func (h *videoHost) createVia(jobID string, by func(picked string) string) (string, string) {
	t, host := h.t, h.host
	t.Helper()
	id := host.InitializeHttpContext()
	host.CallOnRequestHeaders(id, [][2]string{{":method", "POST"}, {":path", wire.PathVideos}, {"content-type", "application/json"}}, false)
	host.CallOnRequestBody(id, []byte(`{"prompt":"x","num_inference_steps":10,"size":"512x512","num_frames":16}`), true)
	addr, _ := header(host.GetCurrentRequestHeaders(id), wire.HeaderPick)
	if addr == "" {
		t.Fatal("video create not picked")
	}
	addr = by(addr)
	if err := host.SetProperty([]string{"upstream", "address"}, []byte(addr)); err != nil {
		t.Fatal(err)
	}
	host.CallOnResponseHeaders(id, [][2]string{{":status", "200"}, {"content-type", "application/json"}, {wire.HeaderWorker, "http://" + addr}}, false)
	host.CallOnResponseBody(id, []byte(`{"id":"`+jobID+`","object":"video","status":"queued","progress":0}`), true)
	var job map[string]any
	if err := json.Unmarshal(host.GetCurrentResponseBody(id), &job); err != nil {
		t.Fatal(err)
	}
	host.CompleteHttpContext(id)
	return addr, job["id"].(string)
}

// create lets the picked worker take the job.
func (h *videoHost) create(jobID string) (string, string) {
	h.t.Helper()
	return h.createVia(jobID, func(picked string) string { return picked })
}

// call sends a job call and answers it with status and body.
func (h *videoHost) call(method, wrapped, status, body string) {
	id := h.host.InitializeHttpContext()
	h.host.CallOnRequestHeaders(id, [][2]string{{":method", method}, {":path", wire.PathVideos + "/" + wrapped}}, true)
	h.host.CallOnResponseHeaders(id, [][2]string{{":status", status}, {"content-type", "application/json"}}, false)
	h.host.CallOnResponseBody(id, []byte(body), true)
	h.host.CompleteHttpContext(id)
}

// work syncs and returns the work and requests the report counts on each
// worker.
func (h *videoHost) work() map[string][2]int64 {
	h.t.Helper()
	return workOf(syncOnce(h.t, h.host, h.view))
}

func workOf(rep wire.LoadReport) map[string][2]int64 {
	out := map[string][2]int64{}
	for _, h := range rep.Hosts {
		out[h.Addr] = [2]int64{h.Work, h.Requests}
	}
	return out
}

// TestRoundRobinIsOneCycle: with pick_policy round-robin the filter names
// the workers in turn, whatever the stream, and the next one for a retry.
func TestRoundRobinIsOneCycle(t *testing.T) {
	cfg := []byte(strings.Replace(string(pickConfig), `"pick":true`, `"pick":true,"pick_policy":"round-robin"`, 1))
	for _, runner := range []string{"go", "wasm"} {
		t.Run(runner, func(t *testing.T) {
			host, reset := proxytest.NewHostEmulator(proxytest.NewEmulatorOption().WithVMContext(newVM(t, runner)).
				WithPluginConfiguration(cfg).WithProperty([]string{"node", "id"}, []byte("envoy-a")))
			defer reset()
			if st := host.StartPlugin(); st != types.OnPluginStartStatusOK {
				t.Fatalf("plugin start = %v", st)
			}
			syncOnce(t, host, wire.PickView{Generation: 1, Workers: []wire.PickWorker{
				{Addr: "10.0.0.1:80", Image: true}, {Addr: "10.0.0.2:80", Image: true}, {Addr: "10.0.0.3:80", Video: true}}})
			var got []string
			for range 6 {
				_, hs := imageRequest(t, host)
				first, _ := header(hs, wire.HeaderPick)
				retry, _ := header(hs, wire.HeaderPickRetry)
				if retry == first || retry == "" {
					t.Fatalf("pick %q, retry %q", first, retry)
				}
				got = append(got, first)
			}
			want := []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.1:80", "10.0.0.2:80", "10.0.0.1:80", "10.0.0.2:80"}
			if !slices.Equal(got, want) {
				t.Fatalf("picks %v, want %v", got, want)
			}
		})
	}
	eachRunnerWithConfig(t, []byte(strings.Replace(string(pickConfig), `"pick":true`, `"pick":true,"pick_policy":"fastest"`, 1)), types.OnPluginStartStatusFailed)
}
