package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

// The router-owned queue end to end: a real Envoy, the real control plane
// (its queue) and fake workers that take a fixed 150-300 ms a generation.

// queueResult is one request's answer and when it came.
type queueResult struct {
	status int
	body   []byte
	header http.Header
	worker string
	at     time.Time
	err    error
}

// sendImage posts one image request with extra headers; ctx may cut it.
func sendImage(ctx context.Context, front string, headers map[string]string) queueResult {
	return sendImageBody(ctx, front, `{"prompt":"q","size":"256x256"}`, headers)
}

// sendImageBody is sendImage with a body of the caller's.
func sendImageBody(ctx context.Context, front, body string, headers map[string]string) queueResult {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, front+wire.PathImages, strings.NewReader(body))
	if err != nil {
		return queueResult{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return queueResult{err: err, at: time.Now()}
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(resp.Body)
	return queueResult{status: resp.StatusCode, body: buf.Bytes(), header: resp.Header, worker: resp.Header.Get(wire.HeaderWorker), at: time.Now(), err: err}
}

// burst sends n requests at once and returns their results in order.
func burst(front string, n int, headers map[string]string) []queueResult {
	out := make([]queueResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); out[i] = sendImage(context.Background(), front, headers) }()
	}
	wg.Wait()
	return out
}

// queueStatus reads GET /queue.
func queueStatus(t testing.TB, api string) map[string]any {
	t.Helper()
	r := get(t, api+wire.PathQueueStatus)
	if r.Status != http.StatusOK {
		t.Fatalf("GET /queue: %d %s", r.Status, r.Body)
	}
	return r.JSON(t)
}

func num(v any) int {
	f, _ := v.(float64)
	return int(f)
}

// startQueueRouter is a router with the queue over the given workers.
func startQueueRouter(t *testing.T, urls []string, extra ...string) *routerProc {
	t.Helper()
	args := append([]string{"--queue", "--worker-urls"}, urls...)
	return startRouter(t, append(args, extra...)...)
}

// TestQueueLateBinding: a burst on two workers waits in the router, not in
// the workers: neither ever holds more than its slot and one racing
// request, every request is served, and GET /queue saw them wait.
func TestQueueLateBinding(t *testing.T) {
	t.Parallel()
	ws, urls := startFleet(t, 2, "--time-scale", "1", "--base", "150ms", "--per-step", "0", "--jitter", "0")
	r := startQueueRouter(t, urls)
	var maxWaiting int
	done := make(chan []queueResult)
	go func() { done <- burst(r.Front, 12, nil) }()
	var results []queueResult
	for results == nil {
		select {
		case results = <-done:
		case <-time.After(20 * time.Millisecond):
			maxWaiting = max(maxWaiting, num(queueStatus(t, r.API)["waiting"]))
		}
	}
	for i, res := range results {
		if res.err != nil || res.status != http.StatusOK {
			t.Fatalf("request %d: %d %v %s", i, res.status, res.err, res.body)
		}
	}
	if maxWaiting < 4 {
		t.Fatalf("at most %d requests seen waiting in the router's queue during a burst of 12 on 2 workers", maxWaiting)
	}
	for _, w := range ws {
		var st struct {
			MaxDepth int `json:"max_queue_depth"`
			Served   int `json:"served_total"`
		}
		if err := json.Unmarshal(get(t, w.URL+"/stats").Body, &st); err != nil {
			t.Fatal(err)
		}
		if st.MaxDepth > 2 {
			t.Errorf("worker %s held %d requests at once; the queue keeps one running (and at most one racing it)", w.ID, st.MaxDepth)
		}
		if st.Served == 0 {
			t.Errorf("worker %s served nothing", w.ID)
		}
	}
	if st := queueStatus(t, r.API); num(st["waiting"]) != 0 || num(st["granted"]) < 4 {
		t.Fatalf("after the burst: %v", st)
	}
}

// TestQueuePriorityAndTenants: a priority request sent into a queued
// burst is served next; a second tenant's requests take turns with the
// first tenant's burst instead of waiting behind it.
func TestQueuePriorityAndTenants(t *testing.T) {
	t.Parallel()
	_, urls := startFleet(t, 1, "--time-scale", "1", "--base", "150ms", "--per-step", "0", "--jitter", "0")
	r := startQueueRouter(t, urls)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ends := map[string]time.Time{}
	send := func(name string, headers map[string]string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := sendImage(context.Background(), r.Front, headers)
			if res.err != nil || res.status != http.StatusOK {
				t.Errorf("%s: %d %v %s", name, res.status, res.err, res.body)
			}
			mu.Lock()
			ends[name] = res.at
			mu.Unlock()
		}()
	}
	for i := range 8 {
		send("burst"+strconv.Itoa(i), map[string]string{wire.HeaderTenant: "trainer"})
	}
	eventually(t, 10*time.Second, "the burst queued", func() bool { return num(queueStatus(t, r.API)["waiting"]) >= 6 })
	send("urgent", map[string]string{wire.HeaderTenant: "trainer", wire.HeaderPriority: "10"})
	send("eval0", map[string]string{wire.HeaderTenant: "eval"})
	send("eval1", map[string]string{wire.HeaderTenant: "eval"})
	wg.Wait()
	before := func(name string) int {
		n := 0
		for k, at := range ends {
			if strings.HasPrefix(k, "burst") && at.After(ends[name]) {
				n++
			}
		}
		return n
	}
	// The burst's first request runs and one may race it; the rest wait
	// in order behind the urgent one, and take turns with the second
	// tenant's.
	if n := before("urgent"); n < 5 {
		t.Fatalf("the priority request finished before only %d of the 8 burst requests", n)
	}
	if n := before("eval1"); n < 3 {
		t.Fatalf("the second tenant's last request finished before only %d of the first tenant's burst", n)
	}
	st := queueStatus(t, r.API)
	tenants := map[string]bool{}
	for _, x := range st["tenants"].([]any) {
		tenants[x.(map[string]any)["tenant"].(string)] = true
	}
	if !tenants["trainer"] || !tenants["eval"] {
		t.Fatalf("GET /queue's tenants: %v", st["tenants"])
	}
}

// TestQueueCancelAndRefuse: requests whose clients give up while queued
// never reach a worker; a full queue answers 429 with Retry-After at once
// and loses nothing; bad priority and tenant headers are 400.
func TestQueueCancelAndRefuse(t *testing.T) {
	t.Parallel()
	ws, urls := startFleet(t, 1, "--time-scale", "1", "--base", "300ms", "--per-step", "0", "--jitter", "0")
	r := startQueueRouter(t, urls, "--max-queued", "4")

	for _, h := range []map[string]string{{wire.HeaderPriority: "high"}, {wire.HeaderPriority: "5000"}, {wire.HeaderTenant: "a b"}} {
		res := sendImage(context.Background(), r.Front, h)
		if res.status != http.StatusBadRequest || !strings.Contains(string(res.body), `"error"`) {
			t.Fatalf("headers %v: %d %s, want 400 JSON", h, res.status, res.body)
		}
	}

	// One request runs; four wait and their clients leave.
	first := make(chan queueResult, 1)
	go func() { first <- sendImage(context.Background(), r.Front, nil) }()
	eventually(t, 10*time.Second, "the first request running", func() bool { return stats(t, ws[0]).QueueDepth == 1 })
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
			defer cancel()
			if res := sendImage(ctx, r.Front, nil); res.err == nil {
				t.Errorf("a request whose client gave up was answered: %d", res.status)
			}
		}()
	}
	wg.Wait()
	eventually(t, 10*time.Second, "the cancelled requests gone from the queue", func() bool {
		st := queueStatus(t, r.API)
		return num(st["waiting"]) == 0 && num(st["cancelled"]) == 4
	})
	if res := <-first; res.status != http.StatusOK {
		t.Fatalf("the running request: %d %s", res.status, res.body)
	}
	// The worker runs in order: had any cancelled request reached it, it
	// would run before this one.
	if res := sendImage(context.Background(), r.Front, nil); res.status != http.StatusOK {
		t.Fatalf("a request after the cancelled ones: %d %s", res.status, res.body)
	}
	if st := stats(t, ws[0]); st.ServedTotal != 2 {
		t.Fatalf("the worker served %d requests, want 2: the 4 cancelled ones must never reach it", st.ServedTotal)
	}
	var gone struct {
		N int `json:"started_after_client_gone"`
	}
	if err := json.Unmarshal(get(t, ws[0].URL+"/stats").Body, &gone); err != nil || gone.N != 0 {
		t.Fatalf("the worker started %d generations whose client had gone (%v)", gone.N, err)
	}

	// --max-queued 4: a burst of 12 on one worker; what does not fit is
	// refused at once, nothing is lost.
	results := burst(r.Front, 12, nil)
	served, refused := 0, 0
	for _, res := range results {
		switch {
		case res.err == nil && res.status == http.StatusOK:
			served++
		case res.err == nil && res.status == http.StatusTooManyRequests:
			refused++
			if res.header.Get("Retry-After") == "" || !strings.Contains(string(res.body), "--max-queued") {
				t.Fatalf("429 without Retry-After or reason: %v %s", res.header, res.body)
			}
		default:
			t.Fatalf("a request was neither served nor refused: %d %v %s", res.status, res.err, res.body)
		}
	}
	if refused < 12-4-2 || served+refused != 12 {
		t.Fatalf("%d served, %d refused of 12 with room for 4 waiting", served, refused)
	}
}

// TestQueueSurvivesControlPlaneCrash: requests waiting in the queue when
// the control plane dies are picked by the filter instead: all served.
func TestQueueSurvivesControlPlaneCrash(t *testing.T) {
	t.Parallel()
	_, urls := startFleet(t, 1, "--time-scale", "1", "--base", "200ms", "--per-step", "0", "--jitter", "0")
	state := t.TempDir()
	r := startQueueRouter(t, urls, "--state-dir", state)
	b, err := os.ReadFile(filepath.Join(state, "envoy.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) }) // the surviving Envoy
	done := make(chan []queueResult)
	go func() { done <- burst(r.Front, 6, nil) }()
	eventually(t, 10*time.Second, "requests queued", func() bool { return num(queueStatus(t, r.API)["waiting"]) >= 3 })
	r.kill()
	for i, res := range <-done {
		if res.err != nil || res.status != http.StatusOK {
			t.Fatalf("request %d after the control plane died: %d %v %s", i, res.status, res.err, res.body)
		}
	}
}

// TestQueueInPlaceUpdateHoldsTheWork: with the queue, an in-place update
// takes the fleet out of rotation while it loads: requests that arrive
// meanwhile wait in the router's queue, every answer names the weights
// that made it, and none after the update's 200 comes from the old ones.
func TestQueueInPlaceUpdateHoldsTheWork(t *testing.T) {
	t.Parallel()
	_, urls := startFleet(t, 2, "--time-scale", "1", "--base", "100ms", "--per-step", "0", "--jitter", "0", "--update-time", "600ms")
	r := startQueueRouter(t, urls)
	done := make(chan []queueResult, 1)
	go func() { done <- burst(r.Front, 16, nil) }()
	eventually(t, 10*time.Second, "the burst queued", func() bool { return num(queueStatus(t, r.API)["waiting"]) >= 6 })
	upd := postJSON(t, r.Front+"/update_weights_from_disk", map[string]any{"model_path": "/ckpt/held", "weight_version": "held-1"})
	updated := time.Now()
	if upd.Status != http.StatusOK {
		t.Fatalf("update: %d %s", upd.Status, upd.Body)
	}
	late := burst(r.Front, 4, nil) // sent after the 200: new weights only
	results := append(<-done, late...)
	for i, res := range results {
		if res.err != nil || res.status != http.StatusOK {
			t.Fatalf("request %d: %d %v %s", i, res.status, res.err, res.body)
		}
		version, model := res.header.Get(wire.HeaderWeightVersion), res.header.Get("X-Model-Path")
		if (version == "held-1") != (model == "/ckpt/held") {
			t.Fatalf("request %d answered by weights %s under version %q", i, model, version)
		}
		if res.at.After(updated.Add(time.Second)) && model != "/ckpt/held" {
			t.Fatalf("request %d answered by the old weights (%s) after the update's 200", i, model)
		}
	}
	for i, res := range late {
		if res.header.Get(wire.HeaderWeightVersion) != "held-1" {
			t.Fatalf("request %d sent after the update's 200 answered under version %q", i, res.header.Get(wire.HeaderWeightVersion))
		}
	}
}

// TestQueueTwoEnvoysShareOneQueue: two Envoy replicas in front of one
// worker wait in the same queue: both send requests there, and the worker
// never holds more than its slot and one racing request, as with one Envoy.
func TestQueueTwoEnvoysShareOneQueue(t *testing.T) {
	t.Parallel()
	ws, urls := startFleet(t, 1, "--time-scale", "1", "--base", "150ms", "--per-step", "0", "--jitter", "0")
	front, api, admins := startLeastWorkReplicas(t, urls, "--queue")
	noReuse := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	send := func() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("POST", "http://127.0.0.1:"+strconv.Itoa(front)+wire.PathImages, strings.NewReader(`{"prompt":"p","size":"256x256"}`))
			req.Header.Set("content-type", "application/json")
			resp, err := noReuse.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			if err != nil || resp.StatusCode != http.StatusOK {
				mu.Lock()
				failed++
				mu.Unlock()
			}
		}()
	}
	// New connections until both Envoys have asked the queue for a turn.
	eventually(t, 30*time.Second, "both Envoys to queue requests", func() bool {
		send()
		return envoyStat(t, admins[0], "wasmcustom.diffusion_router.queue.queued") > 0 &&
			envoyStat(t, admins[1], "wasmcustom.diffusion_router.queue.queued") > 0
	})
	wg.Wait()
	if failed > 0 {
		t.Fatalf("%d requests failed", failed)
	}
	var st struct {
		MaxDepth int `json:"max_queue_depth"`
	}
	if err := json.Unmarshal(get(t, ws[0].URL+"/stats").Body, &st); err != nil {
		t.Fatal(err)
	}
	if st.MaxDepth > 2 {
		t.Fatalf("the worker held %d requests at once with two Envoys sharing one queue", st.MaxDepth)
	}
	if q := queueStatus(t, api); num(q["granted"]) < 2 || num(q["waiting"]) != 0 {
		t.Fatalf("queue after the run: %v", q)
	}
}

// TestQueueWhileAsleep: with --queue-while-asleep a request sent while the
// fleet's memory is released waits in the queue and is served once the
// fleet resumes, instead of an immediate 503.
func TestQueueWhileAsleep(t *testing.T) {
	t.Parallel()
	_, urls := startFleet(t, 1, "--time-scale", "1", "--base", "50ms", "--per-step", "0", "--jitter", "0")
	r := startQueueRouter(t, urls, "--queue-while-asleep")
	if res := postJSON(t, r.Front+"/release_memory_occupation", map[string]any{}); res.Status != http.StatusOK {
		t.Fatalf("release: %d %s", res.Status, res.Body)
	}
	// The filters learn the fleet sleeps with their next view.
	eventually(t, 10*time.Second, "a request to wait for the fleet to wake", func() bool {
		done := make(chan queueResult, 1)
		go func() { done <- sendImage(context.Background(), r.Front, nil) }()
		for {
			select {
			case res := <-done:
				if res.status != http.StatusServiceUnavailable {
					t.Fatalf("while asleep, before the views knew: %d %s", res.status, res.body)
				}
				return false // answered 503 before the views said the fleet sleeps
			case <-time.After(20 * time.Millisecond):
				if num(queueStatus(t, r.API)["waiting"]) == 1 {
					go func() {
						if res := postJSON(t, r.Front+"/resume_memory_occupation", map[string]any{}); res.Status != http.StatusOK {
							t.Errorf("resume: %d %s", res.Status, res.Body)
						}
					}()
					if res := <-done; res.err != nil || res.status != http.StatusOK {
						t.Fatalf("the request that waited for the fleet to wake: %d %v %s", res.status, res.err, res.body)
					}
					return true
				}
			}
		}
	})
}
