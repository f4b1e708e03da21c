package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

// sample is one generation as a trainer sees it.
type sample struct {
	start, end time.Time
	status     int
	version    string // x-weight-version
	worker     string // x-diffusion-worker
	model      string // the model_path the worker says produced it
}

// steadyLoad sends generations at a fixed concurrency until stopped (or
// until max requests), recording every answer.
type steadyLoad struct {
	mu      sync.Mutex
	samples []sample
	stop    chan struct{}
	done    sync.WaitGroup
}

func startSteadyLoad(base string, concurrency, maxRequests int) *steadyLoad {
	l := &steadyLoad{stop: make(chan struct{})}
	budget := make(chan struct{}, maxRequests)
	for range maxRequests {
		budget <- struct{}{}
	}
	close(budget)
	for range concurrency {
		l.done.Add(1)
		go func() {
			defer l.done.Done()
			for range budget {
				select {
				case <-l.stop:
					return
				default:
				}
				s := sample{start: time.Now()}
				resp, err := tryDo(context.Background(), "POST", base+"/v1/images/generations", "application/json",
					strings.NewReader(`{"prompt":"rollout","num_inference_steps":20}`))
				s.end = time.Now()
				if err == nil {
					s.status = resp.Status
					s.version = resp.Header.Get(wire.HeaderWeightVersion)
					s.worker = resp.Header.Get(wire.HeaderWorker)
					var v struct {
						Model string `json:"model"`
					}
					_ = json.Unmarshal(resp.Body, &v)
					s.model = v.Model
				}
				l.mu.Lock()
				l.samples = append(l.samples, s)
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *steadyLoad) finish() []sample {
	close(l.stop)
	l.done.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]sample(nil), l.samples...)
}

func (l *steadyLoad) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.samples)
}

func startFleet(t *testing.T, n int, args ...string) ([]*fakeWorker, []string) {
	t.Helper()
	var ws []*fakeWorker
	var urls []string
	for range n {
		w := startWorker(t, args...)
		ws = append(ws, w)
		urls = append(urls, w.URL)
	}
	return ws, urls
}

func workersByURL(t *testing.T, base string) map[string]map[string]any {
	t.Helper()
	var v struct {
		Workers []map[string]any `json:"workers"`
	}
	if err := json.Unmarshal(get(t, base+"/workers").Body, &v); err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]any{}
	for _, w := range v.Workers {
		out[fmt.Sprint(w["url"])] = w
	}
	return out
}

const initialModel = "black-forest-labs/FLUX.1-dev"

// TestWeightUpdateBothModes: 16 workers under steady load switch weights in
// place, then in drain mode. Everything succeeds; in drain mode no request
// fails and every answer's x-weight-version matches the weights the worker
// says produced it.
func TestWeightUpdateBothModes(t *testing.T) {
	t.Parallel()
	workers, urls := startFleet(t, 16, "--update-time", "100s") // an update takes 100 ms
	r := startRouter(t, append([]string{"--worker-urls"}, urls...)...)
	load := startSteadyLoad(r.Front, 16, 100000)
	eventually(t, 20*time.Second, "load to start", func() bool { return load.count() > 100 })

	inplace := postJSON(t, r.Front+"/update_weights_from_disk", map[string]any{"model_path": "/ckpt/step-1", "flush_cache": true})
	if inplace.Status != 200 {
		t.Fatalf("in-place update = %d %s", inplace.Status, inplace.Body)
	}
	iv := inplace.JSON(t)
	if iv["weight_version"] != "1" || len(iv["results"].([]any)) != 16 || iv["failed"] != 0.0 {
		t.Fatalf("in-place answer = %v", iv)
	}
	drainStart := time.Now()
	drain := postJSON(t, r.Front+"/update_weights_from_disk", map[string]any{
		"model_path": "/ckpt/step-2", "mode": "drain", "max_unavailable": 4, "weight_version": "step-2"})
	if drain.Status != 200 {
		t.Fatalf("drain update = %d %s", drain.Status, drain.Body)
	}
	if dv := drain.JSON(t); dv["weight_version"] != "step-2" || dv["succeeded"] != 16.0 {
		t.Fatalf("drain answer = %v", dv)
	}
	after := load.count()
	eventually(t, 20*time.Second, "more load after the update", func() bool { return load.count() > after+200 })
	samples := load.finish()

	models := map[string]string{"0": initialModel, "1": "/ckpt/step-1", "step-2": "/ckpt/step-2"}
	failed, checked, mismatched := 0, 0, 0
	for _, s := range samples {
		if s.status != 200 {
			failed++
			continue
		}
		if s.version == "" || s.worker == "" {
			t.Fatalf("answer without x-weight-version / x-diffusion-worker: %+v", s)
		}
		if s.start.After(drainStart) {
			checked++
			if models[s.version] != s.model {
				mismatched++
				t.Errorf("drain mode: x-weight-version %q but the worker generated with %q", s.version, s.model)
			}
		}
	}
	if failed != 0 {
		t.Fatalf("%d of %d requests failed during updates", failed, len(samples))
	}
	if checked < 200 {
		t.Fatalf("only %d answers checked during and after the drain update", checked)
	}
	t.Logf("%d requests, none failed; %d answers during/after the drain update, %d version mismatches", len(samples), checked, mismatched)
	view := workersByURL(t, r.Front)
	for _, w := range workers {
		if v := view[w.URL]; v["weight_version"] != "step-2" || v["state"] != "active" {
			t.Fatalf("worker %s = %v", w.URL, v)
		}
		if s := stats(t, w); s.ModelPath != "/ckpt/step-2" {
			t.Fatalf("worker %s holds %s", w.URL, s.ModelPath)
		}
	}
	h := get(t, r.Front+"/health").JSON(t)
	if h["weight_version"] != "step-2" || h["model_path"] != "/ckpt/step-2" {
		t.Fatalf("/health = %v", h)
	}
}

// TestFailedUpdateQuarantines: one of 16 workers fails its update; the answer
// is not 200 and names it; it is quarantined and gets no more traffic; the
// other 15 are updated.
func TestFailedUpdateQuarantines(t *testing.T) {
	t.Parallel()
	workers, urls := startFleet(t, 16)
	bad := workers[3]
	r := startRouter(t, append([]string{"--worker-urls"}, urls...)...)
	if resp := postJSON(t, bad.URL+"/_fake/faults", map[string]any{"update_fail": true}); resp.Status != 200 {
		t.Fatal("cannot set fault")
	}
	load := startSteadyLoad(r.Front, 8, 100000)
	eventually(t, 20*time.Second, "load to start", func() bool { return load.count() > 50 })
	resp := postJSON(t, r.Front+"/update_weights_from_disk", map[string]any{"model_path": "/ckpt/next"})
	if resp.Status == 200 {
		t.Fatalf("partial failure answered 200: %s", resp.Body)
	}
	v := resp.JSON(t)
	if resp.Status != 502 || v["failed"] != 1.0 || v["succeeded"] != 15.0 {
		t.Fatalf("answer = %d %v", resp.Status, v)
	}
	if q := v["quarantined"].([]any); len(q) != 1 || q[0] != bad.URL {
		t.Fatalf("quarantined = %v, want [%s]", q, bad.URL)
	}
	servedAtUpdate := stats(t, bad).ServedTotal
	mark := load.count()
	eventually(t, 20*time.Second, "more load after the update", func() bool { return load.count() > mark+300 })
	samples := load.finish()
	for _, s := range samples {
		if s.status != 200 {
			t.Fatalf("request failed: %+v", s)
		}
	}
	if got := stats(t, bad).ServedTotal; got != servedAtUpdate {
		t.Fatalf("quarantined worker served %d more requests", got-servedAtUpdate)
	}
	view := workersByURL(t, r.Front)
	if b := view[bad.URL]; b["state"] != "quarantined" || !strings.Contains(fmt.Sprint(b["reason"]), "weight update") {
		t.Fatalf("failed worker = %v", b)
	}
	for _, w := range workers {
		if w != bad && view[w.URL]["weight_version"] != "1" {
			t.Fatalf("worker %s = %v", w.URL, view[w.URL])
		}
	}
}

// TestUpdatesDoNotInterleaveAndSleep: a second update while one runs gets 409
// naming the running one; a sleeping fleet answers 503 at once; waking it
// restores service.
func TestUpdatesDoNotInterleaveAndSleep(t *testing.T) {
	t.Parallel()
	_, urls := startFleet(t, 2, "--update-time", "1500s") // 1.5 s per update
	r := startRouter(t, append([]string{"--worker-urls"}, urls...)...)
	first := make(chan response, 1)
	go func() {
		resp, _ := tryDo(context.Background(), "POST", r.Front+"/update_weights_from_disk", "application/json",
			strings.NewReader(`{"model_path":"/ckpt/a"}`))
		first <- resp
	}()
	var running string
	eventually(t, 5*time.Second, "the first update to start", func() bool {
		running, _ = get(t, r.Front+"/health").JSON(t)["running_operation"].(string)
		return running != ""
	})
	second := postJSON(t, r.Front+"/update_weights_from_disk", map[string]any{"model_path": "/ckpt/b"})
	if second.Status != 409 || second.JSON(t)["running"] != running {
		t.Fatalf("second update = %d %s, want 409 naming %s", second.Status, second.Body, running)
	}
	if got := <-first; got.Status != 200 {
		t.Fatalf("first update = %d %s", got.Status, got.Body)
	}

	if resp := postJSON(t, r.Front+"/release_memory_occupation", map[string]any{}); resp.Status != 200 {
		t.Fatalf("sleep = %d %s", resp.Status, resp.Body)
	}
	// At once: the sleeping fleet's route answers; nothing waits for the
	// fleet to wake (the router's queue never held it).
	queued := envoyStat(t, r.Admin, "wasmcustom.diffusion_router.queue.queued")
	resp := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "x"})
	if resp.Status != 503 || !strings.Contains(fmt.Sprint(resp.JSON(t)["error"]), "asleep") {
		t.Fatalf("generation while asleep = %d %s", resp.Status, resp.Body)
	}
	if n := envoyStat(t, r.Admin, "wasmcustom.diffusion_router.queue.queued"); n != queued {
		t.Fatalf("the request waited in the router's queue (%d queued, %d before) instead of being answered", n, queued)
	}
	if resp := postJSON(t, r.Front+"/resume_memory_occupation", map[string]any{}); resp.Status != 200 {
		t.Fatalf("wake = %d %s", resp.Status, resp.Body)
	}
	if resp := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "x"}); resp.Status != 200 {
		t.Fatalf("generation after wake = %d %s", resp.Status, resp.Body)
	}
}

// TestJoinersCatchUp: a worker re-admitted after quarantine, and a new one,
// load the fleet's weights before their first request; one that cannot is
// not admitted.
func TestJoinersCatchUp(t *testing.T) {
	t.Parallel()
	workers, urls := startFleet(t, 3)
	r := startRouter(t, append([]string{"--worker-urls"}, urls...)...)
	if resp := postJSON(t, r.Front+"/update_weights_from_disk", map[string]any{"model_path": "/ckpt/v7", "weight_version": "v7"}); resp.Status != 200 {
		t.Fatalf("update = %d %s", resp.Status, resp.Body)
	}
	// Worker 0 dies and comes back on its port with its original weights.
	victim := workers[0]
	id := strings.NewReplacer(":", "%3A", "/", "%2F").Replace(victim.URL)
	if resp := do(t, "PUT", r.Front+"/workers/"+id, "application/json", strings.NewReader(`{"is_dead": true}`)); resp.Status != 200 {
		t.Fatalf("quarantine = %d", resp.Status)
	}
	victim.kill()
	port := victim.URL[strings.LastIndexByte(victim.URL, ':')+1:]
	back := startWorker(t, "--port", port)
	if s := stats(t, back); s.ModelPath != initialModel {
		t.Fatalf("restarted worker holds %s", s.ModelPath)
	}
	if resp := postJSON(t, r.Front+"/add_worker", map[string]any{"url": back.URL}); resp.Status != 200 {
		t.Fatalf("re-admit = %d %s", resp.Status, resp.Body)
	}
	fresh := startWorker(t)
	if resp := postJSON(t, r.Front+"/add_worker", map[string]any{"url": fresh.URL}); resp.Status != 200 {
		t.Fatalf("add = %d %s", resp.Status, resp.Body)
	}
	for _, w := range []*fakeWorker{back, fresh} {
		s := stats(t, w)
		if s.ModelPath != "/ckpt/v7" || s.ServedTotal != 0 {
			t.Fatalf("%s after admission: %+v", w.ID, s)
		}
	}
	g := &loadGen{}
	g.run(r.Front, `{"prompt":"x","num_inference_steps":4}`, 100, 8)
	if g.failed.Load() != 0 || stats(t, back).ServedTotal == 0 || stats(t, fresh).ServedTotal == 0 {
		t.Fatalf("after catch-up: %d failures; re-admitted served %d, new served %d", g.failed.Load(), stats(t, back).ServedTotal, stats(t, fresh).ServedTotal)
	}
	view := workersByURL(t, r.Front)
	for _, w := range []*fakeWorker{back, fresh} {
		if view[w.URL]["weight_version"] != "v7" {
			t.Fatalf("%s = %v", w.URL, view[w.URL])
		}
	}
	// A joiner that cannot load the weights is not admitted.
	broken := startWorker(t)
	postJSON(t, broken.URL+"/_fake/faults", map[string]any{"update_fail": true})
	resp := postJSON(t, r.Front+"/add_worker", map[string]any{"url": broken.URL})
	if resp.Status != 502 {
		t.Fatalf("joiner that fails its catch-up = %d %s, want 502", resp.Status, resp.Body)
	}
	if st := stateOf(t, r.Front, broken.URL); st != "quarantined" {
		t.Fatalf("joiner that failed its catch-up is %s", st)
	}
	if s := stats(t, broken); s.ServedTotal != 0 {
		t.Fatalf("broken joiner served %d", s.ServedTotal)
	}
}
