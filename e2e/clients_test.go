package e2e

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// As bench_serving.py does for text-to-video on a mixed fleet: read
// /v1/model_info (an image worker answers), then post /v1/videos naming
// that model. sglang ignores the name, so the router must too: the videos
// go to the video worker, counted as model fallbacks and logged once.
func TestModelNamesTheWayClientsSendThem(t *testing.T) {
	img1 := startWorker(t)
	img2 := startWorker(t)
	vid := startWorker(t, "--task-type", "T2V", "--model-path", "Wan-AI/Wan2.2-T2V-A14B")
	served := startWorker(t, "--model-path", "/models/qwen-image", "--served-model-name", "qwen-image-served")
	r := startRouter(t, "--worker-urls", img1.URL, img2.URL, vid.URL, served.URL)
	eventually(t, 20*time.Second, "all workers healthy", func() bool {
		return get(t, r.Front+"/health").JSON(t)["healthy_workers"] == 4.0
	})

	info := get(t, r.Front+"/v1/model_info").JSON(t)
	model, _ := info["model_path"].(string)
	if info["task_type"] != "T2I" || model == "" {
		t.Fatalf("/v1/model_info = %v, want an image worker's", info)
	}
	for i := range 10 {
		res := postJSON(t, r.Front+"/v1/videos", map[string]any{"prompt": "waves", "model": model, "num_inference_steps": 2})
		if res.Status != 200 {
			t.Fatalf("video %d naming the image model %q: %d %s", i, model, res.Status, res.Body)
		}
		// A create the router held reaches its worker later.
		if w := jobWorker(t, r.Front, res); w != vid.ID {
			t.Fatalf("video %d naming the image model %q ran on %q: %s", i, model, w, res.Body)
		}
	}
	if n := envoyStat(t, r.Admin, "wasmcustom.diffusion_router.model_fallbacks"); n != 10 {
		t.Fatalf("model fallbacks counted: %d, want 10", n)
	}
	logged := regexpMust(`no worker lists model \\?"` + regexpQuote(model))
	eventually(t, 5*time.Second, "the fallback to be logged", func() bool { return logged.MatchString(r.out.String()) })
	if n := len(logged.FindAllString(r.out.String(), -1)); n != 1 {
		t.Fatalf("the unknown name was logged %d times, want once", n)
	}

	// A worker whose served name differs from its model path is routable by
	// either name: clients read the path from /v1/model_info.
	for _, name := range []string{"/models/qwen-image", "qwen-image-served"} {
		for range 5 {
			res := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "x", "model": name, "num_inference_steps": 1})
			if res.Status != 200 || res.Header.Get("X-Worker-Id") != served.ID {
				t.Fatalf("image naming %q: %d from %q", name, res.Status, res.Header.Get("X-Worker-Id"))
			}
		}
	}
	// An unknown name on an image request goes to an image worker.
	res := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "x", "model": "no-such-model", "num_inference_steps": 1})
	if res.Status != 200 || res.Header.Get("X-Worker-Id") == vid.ID {
		t.Fatalf("image naming an unknown model: %d from %q", res.Status, res.Header.Get("X-Worker-Id"))
	}

	// The OpenAI SDK's models.retrieve.
	if m := get(t, r.Front+"/v1/models/Wan-AI/Wan2.2-T2V-A14B"); m.Status != 200 || m.JSON(t)["id"] != "Wan-AI/Wan2.2-T2V-A14B" {
		t.Fatalf("GET /v1/models/{id}: %d %s", m.Status, m.Body)
	}
	if m := get(t, r.Front+"/v1/models/no-such-model"); m.Status != 404 || m.JSON(t)["error"] == nil {
		t.Fatalf("GET /v1/models/{unknown}: %d %s", m.Status, m.Body)
	}
}

func regexpQuote(s string) string {
	return strings.NewReplacer(".", `\.`, "/", `\/`, "-", `\-`).Replace(s)
}

// --strict-model-routing keeps the 404 for names no worker lists.
func TestStrictModelRouting(t *testing.T) {
	w := startWorker(t)
	r := startRouter(t, "--strict-model-routing", "--worker-urls", w.URL)
	eventually(t, 20*time.Second, "router healthy", func() bool { return get(t, r.Front+"/health").Status == 200 })
	if res := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "x", "model": "nope"}); res.Status != 404 {
		t.Fatalf("unknown model in strict mode: %d %s", res.Status, res.Body)
	}
}

// A URL whose server was replaced by another kind (same host and port,
// another task type and model) is re-read on re-admission: by
// POST /add_worker, and by PUT {"refresh_video_support": true}.
func TestReaddedWorkerIsReadAgain(t *testing.T) {
	port := strconv.Itoa(freePort(t))
	img := startWorker(t, "--port", port)
	r := startRouter(t, "--worker-urls", img.URL)
	eventually(t, 20*time.Second, "router healthy", func() bool { return get(t, r.Front+"/health").Status == 200 })
	if res := postJSON(t, r.Front+"/v1/videos", map[string]any{"prompt": "x"}); res.Status != 400 {
		t.Fatalf("video on an image-only fleet: %d", res.Status)
	}
	img.stop()
	vid := startWorker(t, "--port", port, "--task-type", "T2V", "--model-path", "Wan-AI/Wan2.2-T2V-A14B")
	if res := postJSON(t, r.Front+"/add_worker", map[string]any{"url": vid.URL}); res.Status != 200 {
		t.Fatalf("re-add: %d %s", res.Status, res.Body)
	}
	w := workerState(t, r.Front, vid.URL)
	if fmt.Sprint(w["task_types"]) != "[T2V]" || w["video_support"] != true || !strings.Contains(fmt.Sprint(w["models"]), "Wan-AI/Wan2.2-T2V-A14B") {
		t.Fatalf("after re-adding the replaced server: %v", w)
	}
	eventually(t, 10*time.Second, "videos routed to the replaced server", func() bool {
		res := postJSON(t, r.Front+"/v1/videos", map[string]any{"prompt": "x", "num_inference_steps": 2})
		return res.Status == 200 && res.Header.Get("X-Worker-Id") == vid.ID
	})

	// Back to an image server; the Python routers' refresh call re-reads it.
	vid.stop()
	img2 := startWorker(t, "--port", port, "--model-path", "black-forest-labs/FLUX.1-schnell")
	id := url.PathEscape(strings.NewReplacer(":", "%3A", "/", "%2F").Replace(img2.URL))
	put := do(t, "PUT", r.Front+"/workers/"+id, "application/json", strings.NewReader(`{"refresh_video_support": true}`))
	if put.Status != 200 {
		t.Fatalf("PUT refresh_video_support: %d %s", put.Status, put.Body)
	}
	wv, _ := put.JSON(t)["worker"].(map[string]any)
	if wv["video_support"] != false || !strings.Contains(fmt.Sprint(wv["models"]), "FLUX.1-schnell") {
		t.Fatalf("after refresh: %v", wv)
	}
	eventually(t, 10*time.Second, "videos refused again", func() bool {
		return postJSON(t, r.Front+"/v1/videos", map[string]any{"prompt": "x"}).Status == 400
	})
	if !regexpMust(`worker capabilities changed`).MatchString(r.out.String()) {
		t.Fatal("the change of capabilities was not logged")
	}
}

// Sleep and wake as the Python routers answer them: repeating a call is
// harmless, a job on a sleeping worker is kept (503, not 404), and a list
// naming a job goes to that job's worker.
func TestSleepWakeAndJobsAsTheirClientsSeeThem(t *testing.T) {
	vid := startWorker(t, "--task-type", "T2V", "--model-path", "Wan-AI/Wan2.2-T2V-A14B")
	r := startRouter(t, "--worker-urls", vid.URL)
	eventually(t, 20*time.Second, "router healthy", func() bool { return get(t, r.Front+"/health").Status == 200 })
	job := postJSON(t, r.Front+"/v1/videos", map[string]any{"prompt": "waves", "num_inference_steps": 2}).JSON(t)
	id, _ := job["id"].(string)

	list := get(t, r.Front+"/v1/videos?video_id="+url.QueryEscape(id))
	var lv struct {
		Data []map[string]any `json:"data"`
	}
	if err := json.Unmarshal(list.Body, &lv); err != nil || list.Status != 200 || len(lv.Data) == 0 || lv.Data[0]["id"] != id {
		t.Fatalf("GET /v1/videos?video_id=: %d %s", list.Status, list.Body)
	}
	if res := get(t, r.Front+"/v1/videos?video_id=video_unknown"); res.Status != 404 {
		t.Fatalf("GET /v1/videos?video_id=<not ours>: %d %s", res.Status, res.Body)
	}
	// Paging with sglang's cursor: ?after= takes the id as the router gave
	// it, and the worker continues past it.
	second := postJSON(t, r.Front+"/v1/videos", map[string]any{"prompt": "more waves", "num_inference_steps": 2}).JSON(t)
	page := get(t, r.Front+"/v1/videos?order=asc&limit=5&after="+url.QueryEscape(id))
	var pv struct {
		Data []map[string]any `json:"data"`
	}
	if err := json.Unmarshal(page.Body, &pv); err != nil || page.Status != 200 || len(pv.Data) != 1 || pv.Data[0]["id"] != second["id"] {
		t.Fatalf("GET /v1/videos?after=<first job>: %d %s; want the second job only", page.Status, page.Body)
	}

	// Twice each: the second call finds nothing to do, and says so.
	twice := func(path, already string) {
		t.Helper()
		for i := range 2 {
			res := postJSON(t, r.Front+path, map[string]any{})
			if res.Status != 200 || (i == 1 && res.JSON(t)["message"] != already) {
				t.Fatalf("%s #%d: %d %s", path, i+1, res.Status, res.Body)
			}
		}
	}
	twice("/release_memory_occupation", "All workers are already sleeping")
	if h := get(t, r.Front+"/health").JSON(t); h["sleeping_workers"] != 1.0 {
		t.Fatalf("/health while asleep: %v", h)
	}
	if w := workerState(t, r.Front, vid.URL); w["is_sleeping"] != true {
		t.Fatalf("worker while asleep: %v", w)
	}
	eventually(t, 10*time.Second, "polls of the sleeping worker's job to answer 503", func() bool {
		p := get(t, r.Front+"/v1/videos/"+id)
		return p.Status == 503 && strings.Contains(fmt.Sprint(p.JSON(t)["error"]), "Mapped worker is sleeping")
	})
	twice("/resume_memory_occupation", "All workers are already active")
	eventually(t, 10*time.Second, "the job to be polled again after wake", func() bool {
		return get(t, r.Front+"/v1/videos/"+id).Status == 200
	})
}

// A worker registered before its server listens is routable about a second
// after the server comes up, however long the health-check interval.
func TestWorkerRegisteredBeforeItListens(t *testing.T) {
	port := strconv.Itoa(freePort(t))
	r := startRouter(t, "--health-check-interval", "3600")
	u := "http://127.0.0.1:" + port
	if res := postJSON(t, r.Front+"/add_worker", map[string]any{"url": u}); res.Status != 200 {
		t.Fatalf("add_worker: %d %s", res.Status, res.Body)
	}
	w := startWorker(t, "--port", port, "--task-type", "T2V", "--model-path", "Wan-AI/Wan2.2-T2V-A14B")
	started := time.Now()
	eventually(t, 10*time.Second, "the worker to be routable", func() bool {
		return postJSON(t, r.Front+"/v1/videos", map[string]any{"prompt": "x", "num_inference_steps": 1}).Status == 200
	})
	t.Logf("routable %v after its server came up", time.Since(started).Round(time.Millisecond))
	if st := workerState(t, r.Front, w.URL); fmt.Sprint(st["task_types"]) != "[T2V]" {
		t.Fatalf("capabilities not learned: %v", st)
	}
}
