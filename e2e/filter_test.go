package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

// TestFilterTags: the Wasm filter inside the real Envoy tags requests before
// routing, replaces spoofed tags, and tags responses.
func TestFilterTags(t *testing.T) {
	t.Parallel()
	w := startWorker(t)
	r := startRouter(t, "--worker-urls", w.URL)
	req, _ := http.NewRequest("POST", r.Front+"/v1/images/generations", strings.NewReader(
		`{"prompt":"p","model":"black-forest-labs/FLUX.1-dev","n":2,"num_inference_steps":10,"size":"512x512"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(wire.HeaderTask, "control")
	req.Header.Set(wire.HeaderModel, "evil")
	req.Header.Set(wire.HeaderCost, "1")
	req.Header.Set(wire.HeaderTarget, "0123456789abcdef")
	req.Header.Set(wire.HeaderRequestID, "trainer-sample-42")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	want := map[string]string{
		"X-Seen-Diffusion-Task":  "image",
		"X-Seen-Diffusion-Model": "black-forest-labs/FLUX.1-dev",
		"X-Seen-Diffusion-Cost":  "5", // 2 x 10 x 512 x 512 / 2^20
		"X-Seen-Request-Id":      "trainer-sample-42",
		wire.HeaderRequestID:     "trainer-sample-42",
		wire.HeaderWorker:        w.URL,
		wire.HeaderWeightVersion: "0",
	}
	for h, v := range want {
		if got := resp.Header.Get(h); got != v {
			t.Errorf("%s = %q, want %q", h, got, v)
		}
	}
	if ms, err := strconv.Atoi(resp.Header.Get(wire.HeaderRouterMS)); err != nil || ms < 0 {
		t.Errorf("x-diffusion-router-ms = %q", resp.Header.Get(wire.HeaderRouterMS))
	}
	// A request without an id gets one, and it reaches the worker.
	plain := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "p"})
	if id := plain.Header.Get(wire.HeaderRequestID); id == "" || plain.Header.Get("X-Seen-Request-Id") != id {
		t.Fatalf("generated request id %q, worker saw %q", id, plain.Header.Get("X-Seen-Request-Id"))
	}
	// Stats are Envoy stats, visible to Prometheus.
	prom := string(get(t, r.Admin+"/stats/prometheus").Body)
	for _, m := range []string{"diffusion_router_requests_image{} 2", "diffusion_router_cost_mpix_steps_bucket", "diffusion_router_router_ms_bucket"} {
		if !strings.Contains(prom, m) {
			t.Errorf("/stats/prometheus lacks %q", m)
		}
	}
}

// TestModelRouting: with workers serving different models, a request naming
// a model reaches a worker that has it; an unknown model is a 404.
func TestModelRouting(t *testing.T) {
	t.Parallel()
	flux1 := startWorker(t, "--model-path", "flux")
	flux2 := startWorker(t, "--model-path", "flux")
	qwen := startWorker(t, "--model-path", "qwen-image")
	r := startRouter(t, "--worker-urls", flux1.URL, flux2.URL, qwen.URL)
	for model, allowed := range map[string][]string{"flux": {flux1.ID, flux2.ID}, "qwen-image": {qwen.ID}} {
		for range 12 {
			resp := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "p", "model": model, "num_inference_steps": 2})
			if resp.Status != 200 {
				t.Fatalf("model %s: %d %s", model, resp.Status, resp.Body)
			}
			if got := resp.Header.Get("X-Worker-Id"); !contains(allowed, got) {
				t.Fatalf("model %s served by %s", model, got)
			}
		}
	}
	// Requests without a model may go to any worker: under load (waves
	// of six at once) they reach all three. One at a time on an idle
	// fleet, least-work sends each to the worker that answers fastest.
	var mu sync.Mutex
	seen := map[string]bool{}
	for range 5 {
		var wg sync.WaitGroup
		for range 6 {
			wg.Go(func() {
				resp, err := tryDo(context.Background(), "POST", r.Front+"/v1/images/generations", "application/json",
					strings.NewReader(`{"prompt":"p","num_inference_steps":20}`))
				if err != nil || resp.Status != 200 {
					t.Errorf("request without a model: %v %+v", err, resp)
					return
				}
				mu.Lock()
				seen[resp.Header.Get("X-Worker-Id")] = true
				mu.Unlock()
			})
		}
		wg.Wait()
	}
	if len(seen) != 3 {
		t.Fatalf("requests without a model reached %v, want all three workers", seen)
	}
	// A name no worker lists is ignored, as sglang ignores it (404 only with
	// --strict-model-routing, see TestStrictModelRouting).
	unknown := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "p", "model": "sdxl", "num_inference_steps": 2})
	if unknown.Status != 200 {
		t.Fatalf("unknown model = %d %s", unknown.Status, unknown.Body)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestVideoJobsAcrossWorkers: jobs created on 8 video workers are polled to
// completion through the router, also after the Envoy restarts; forged ids
// and ids whose worker left give 404 JSON.
func TestVideoJobsAcrossWorkers(t *testing.T) {
	t.Parallel()
	workers, urls := startFleet(t, 8, "--task-type", "T2V")
	r := startRouter(t, append([]string{"--worker-urls"}, urls...)...)
	var ids []string
	holders := map[string]string{} // job id -> worker id
	for i := range 24 {
		resp := postJSON(t, r.Front+"/v1/videos", map[string]any{"prompt": fmt.Sprint("clip ", i), "num_inference_steps": 2, "size": "256x256"})
		if resp.Status != 200 {
			t.Fatalf("create = %d %s", resp.Status, resp.Body)
		}
		id := resp.JSON(t)["id"].(string)
		ids = append(ids, id)
		holders[id] = jobWorker(t, r.Front, resp)
	}
	if n := len(distinct(holders)); n < 4 {
		t.Fatalf("24 jobs landed on only %d workers", n)
	}
	// Least-work (the default) counts each job's cost on its worker while
	// it runs: that is what spread one-at-a-time creates. Polls that show
	// every job completed take it all off again.
	eventually(t, 5*time.Second, "the created jobs' work to show in Envoy's stats", func() bool {
		w, _ := outstanding(t, r.Admin)
		return w > 0
	})
	pollAll := func(phase string) {
		for _, id := range ids {
			eventually(t, 15*time.Second, phase+": job "+id+" to complete", func() bool {
				p := get(t, r.Front+"/v1/videos/"+id)
				if p.Status != 200 {
					t.Fatalf("%s: poll %s = %d %s", phase, id, p.Status, p.Body)
				}
				v := p.JSON(t)
				if v["id"] != id || p.Header.Get("X-Worker-Id") != holders[id] {
					t.Fatalf("%s: poll of %s answered by %s with id %v", phase, id, p.Header.Get("X-Worker-Id"), v["id"])
				}
				return v["status"] == "completed"
			})
			c := get(t, r.Front+"/v1/videos/"+id+"/content")
			if c.Status != 200 || c.Header.Get("Content-Type") != "video/mp4" {
				t.Fatalf("%s: content of %s = %d", phase, id, c.Status)
			}
		}
	}
	pollAll("before restart")
	eventually(t, 10*time.Second, "outstanding work back to zero once every job completed", func() bool {
		w, n := outstanding(t, r.Admin)
		return w == 0 && n == 0 && workersOutstanding(t, r.API) == 0
	})

	pid := childPID(t, r.cmd.Process.Pid, "envoy")
	if err := killPID(pid); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the restarted Envoy to serve", func() bool {
		resp, err := tryDo(context.Background(), "GET", r.Front+"/v1/videos/"+ids[0], "", nil)
		return err == nil && resp.Status == 200
	})
	pollAll("after Envoy restart")

	if del := do(t, "DELETE", r.Front+"/v1/videos/"+ids[0], "", nil); del.Status != 200 {
		t.Fatalf("delete = %d %s", del.Status, del.Body)
	}
	if gone := get(t, r.Front+"/v1/videos/"+ids[0]); gone.Status != 404 {
		t.Fatalf("deleted job = %d", gone.Status)
	}
	forged := get(t, r.Front+"/v1/videos/video_0123.0123456789abcdef.AAAAAAAAAAAAAAAA")
	if forged.Status != 404 || !strings.Contains(fmt.Sprint(forged.JSON(t)["error"]), "not issued by this router") {
		t.Fatalf("forged id = %d %s", forged.Status, forged.Body)
	}
	// The holder of ids[1] leaves: its jobs answer 404, not another worker's.
	var leaving *fakeWorker
	for _, w := range workers {
		if w.ID == holders[ids[1]] {
			leaving = w
		}
	}
	id := strings.NewReplacer(":", "%3A", "/", "%2F").Replace(leaving.URL)
	if resp := do(t, "PUT", r.Front+"/workers/"+id, "application/json", strings.NewReader(`{"is_dead": true}`)); resp.Status != 200 {
		t.Fatalf("quarantine = %d", resp.Status)
	}
	orphan := get(t, r.Front+"/v1/videos/"+ids[1])
	if orphan.Status != 404 || !strings.Contains(fmt.Sprint(orphan.JSON(t)["error"]), "no longer serving") {
		t.Fatalf("job of a gone worker = %d %s", orphan.Status, orphan.Body)
	}
}

func distinct(m map[string]string) map[string]bool {
	out := map[string]bool{}
	for _, v := range m {
		out[v] = true
	}
	return out
}

// TestFilterSoak sends many requests through Envoy with the Wasm filter and
// checks that no Wasm VM failed (golang/go#78513: the Go runtime aborting
// inside Envoy under load) and that every response was tagged. CI runs 5,000
// requests; `make soak` runs 50,000 (DIFFROUTER_SOAK_REQUESTS).
func TestFilterSoak(t *testing.T) {
	t.Parallel()
	total := 5000
	if v := os.Getenv("DIFFROUTER_SOAK_REQUESTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("DIFFROUTER_SOAK_REQUESTS=%q", v)
		}
		total = n
	}
	_, urls := startFleet(t, 4, "--time-scale", "0.0001")
	r := startRouter(t, append([]string{"--log-level", "info", "--worker-urls"}, urls...)...)
	vmsBefore := statValue(t, r.Admin, "wasm.envoy.wasm.runtime.v8.created")

	var sent, bad, untagged atomic.Int64
	var firstBad atomic.Value
	var wg sync.WaitGroup
	bodies := []string{
		`{"prompt":"p","num_inference_steps":4,"size":"512x512"}`,
		`{"prompt":"p","model":"black-forest-labs/FLUX.1-dev","n":2}`,
		`{"prompt":"` + strings.Repeat("long prompt ", 1000) + `"}`, // over the body limit: streams
		`{"prompt":`, // broken JSON: the worker answers 422
	}
	for c := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; sent.Add(1) <= int64(total); i++ {
				body := bodies[i%len(bodies)]
				resp, err := tryDo(context.Background(), "POST", r.Front+"/v1/images/generations", "application/json", strings.NewReader(body))
				want := 200
				if body == `{"prompt":` {
					want = 422
				}
				if err != nil || resp.Status != want {
					bad.Add(1)
					firstBad.CompareAndSwap(nil, fmt.Sprint(err, resp.Status, string(resp.Body)))
					continue
				}
				if resp.Header.Get(wire.HeaderRouterMS) == "" || resp.Header.Get("X-Seen-Diffusion-Task") != "image" {
					untagged.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if b := bad.Load(); b != 0 {
		t.Fatalf("%d of %d requests failed (first: %v)", b, total, firstBad.Load())
	}
	if u := untagged.Load(); u != 0 {
		t.Fatalf("%d of %d responses were not tagged by the filter", u, total)
	}
	for _, stat := range []string{"wasm.diffusion-tagger.vm_reload", "wasm.diffusion-tagger.vm_reload_failure", "wasmcustom.diffusion_router.filter.errors"} {
		if v := statValue(t, r.Admin, stat); v != 0 {
			t.Errorf("%s = %d after the soak", stat, v)
		}
	}
	if after := statValue(t, r.Admin, "wasm.envoy.wasm.runtime.v8.created"); after != vmsBefore {
		t.Errorf("Envoy created %d new Wasm VMs during the soak (a VM died)", after-vmsBefore)
	}
	log := r.out.String()
	for _, bad := range []*regexp.Regexp{regexp.MustCompile(`poll_oneoff`), regexp.MustCompile(`(?i)wasm.*(failed|crash|abort)`), regexp.MustCompile(`RuntimeError`)} {
		if m := bad.FindString(log); m != "" {
			t.Errorf("Envoy log shows a Wasm failure: %q", m)
		}
	}
	t.Logf("%d requests through the filter at concurrency 64: none failed, all tagged", total)
}

// statValue reads one counter or gauge from Envoy's admin /stats.
func statValue(t *testing.T, admin, name string) int64 {
	t.Helper()
	body := string(get(t, admin+"/stats?filter=^"+regexp.QuoteMeta(name)+"$").Body)
	for _, line := range strings.Split(body, "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok && k == name {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				t.Fatalf("stat %s = %q", name, v)
			}
			return n
		}
	}
	t.Fatalf("stat %s not found in %q", name, body)
	return 0
}
