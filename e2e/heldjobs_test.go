package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

// Video jobs the router holds: the create answers at once whether or not a
// slot is free, the job waits its turn in the router, and every call about
// it works meanwhile.

// createVideo sends one JSON video create and returns its answer.
func createVideo(t *testing.T, front string, body map[string]any) map[string]any {
	t.Helper()
	res := postJSON(t, front+wire.PathVideos, body)
	if res.Status != http.StatusOK {
		t.Fatalf("create = %d %s", res.Status, res.Body)
	}
	return res.JSON(t)
}

// workerPrompts counts the prompts of the jobs a worker holds, by its own
// job list (every job it was ever given and still keeps).
func workerPrompts(t *testing.T, w *fakeWorker, into map[string]int) {
	t.Helper()
	var list struct {
		Data []struct {
			Prompt string `json:"prompt"`
		} `json:"data"`
	}
	if err := json.Unmarshal(get(t, w.URL+wire.PathVideos).Body, &list); err != nil {
		t.Fatalf("worker %s job list: %v", w.URL, err)
	}
	for _, v := range list.Data {
		into[v.Prompt]++
	}
}

// heldStatus is GET /queue's held_jobs.
func heldStatus(t *testing.T, api string) map[string]any {
	t.Helper()
	h, ok := queueStatus(t, api)["held_jobs"].(map[string]any)
	if !ok {
		t.Fatal("GET /queue shows no held_jobs")
	}
	return h
}

// waitCompleted polls a job through the router until it completed.
func waitCompleted(t *testing.T, front, id string, timeout time.Duration) map[string]any {
	t.Helper()
	var job map[string]any
	eventually(t, timeout, "job "+id+" to complete", func() bool {
		res := get(t, front+wire.PathVideos+"/"+id)
		if res.Status != http.StatusOK || json.Unmarshal(res.Body, &job) != nil {
			return false
		}
		if job["status"] == "failed" {
			t.Fatalf("job %s failed: %s", id, res.Body)
		}
		return job["status"] == "completed"
	})
	return job
}

// The case, smaller: 64 creates at once to 4 workers answer at
// once (queued), all complete, and each job ran once on one worker.
func TestVideoCreatesAnswerAtOnce(t *testing.T) {
	t.Parallel()
	ws, urls := startFleet(t, 4, "--task-type", "T2V", "--time-scale", "0.02")
	r := startQueueRouter(t, urls)
	const n = 64
	ids := make([]string, n)
	took := make([]time.Duration, n)
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			res, err := tryDo(t.Context(), "POST", r.Front+wire.PathVideos, "application/json",
				jsonBody(map[string]any{"prompt": "clip " + strconv.Itoa(i), "num_frames": 16}))
			took[i] = time.Since(start)
			var job map[string]any
			if err != nil || res.Status != 200 || json.Unmarshal(res.Body, &job) != nil {
				errs <- fmt.Sprintf("create %d: %v %d %s", i, err, res.Status, res.Body)
				return
			}
			if job["status"] != "queued" || job["object"] != "video" || job["prompt"] != "clip "+strconv.Itoa(i) {
				errs <- fmt.Sprintf("create %d answered %s, want a queued video job with its prompt", i, res.Body)
				return
			}
			ids[i], _ = job["id"].(string)
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	slices.Sort(took)
	t.Logf("64 creates: median %v, p99 %v, max %v", took[n/2], took[n*99/100], took[n-1])
	if h := heldStatus(t, r.API); num(h["taken"]) < n/2 {
		t.Fatalf("the router held %v of 64 creates sent at once to 4 workers; want most", h["taken"])
	}
	for _, id := range ids {
		job := waitCompleted(t, r.Front, id, 3*time.Minute)
		// Every answer about a job names the weights that made it: a
		// held job's too, once its worker has it.
		res := get(t, r.Front+wire.PathVideos+"/"+id)
		if v := res.Header.Get(wire.HeaderWeightVersion); v == "" || job["id"] != id {
			t.Fatalf("completed job %s: version %q, id %v", id, v, job["id"])
		}
		if c := get(t, r.Front+wire.PathVideos+"/"+id+"/content"); c.Status != 200 || c.Header.Get("Content-Type") != "video/mp4" {
			t.Fatalf("content of %s = %d %s", id, c.Status, c.Header.Get("Content-Type"))
		}
	}
	prompts := map[string]int{}
	for _, w := range ws {
		workerPrompts(t, w, prompts)
	}
	for i := range n {
		if got := prompts["clip "+strconv.Itoa(i)]; got != 1 {
			t.Fatalf("job %d reached the workers %d times, want once", i, got)
		}
	}
	h := heldStatus(t, r.API)
	if num(h["waiting"]) != 0 || num(h["sent"]) != num(h["taken"]) || num(h["resent"]) != 0 {
		t.Fatalf("held jobs after the batch: %v", h)
	}
	if st := queueStatus(t, r.API); num(st["cancelled"]) != 0 {
		t.Fatalf("the queue counts %v cancelled: every job ran", st["cancelled"])
	}
}

// A job deleted while it waits in the router never reaches a worker; a
// waiting job's poll, content and the job list answer as a worker's would.
func TestDeletedWaitingJobNeverRuns(t *testing.T) {
	t.Parallel()
	ws, urls := startFleet(t, 1, "--task-type", "T2V", "--time-scale", "1")
	r := startQueueRouter(t, urls)
	first := createVideo(t, r.Front, map[string]any{"prompt": "first", "num_inference_steps": 20, "size": "512x512"})
	waiting := createVideo(t, r.Front, map[string]any{"prompt": "deleted", "num_inference_steps": 2, "size": "512x512"})
	id := waiting["id"].(string)
	if h := heldStatus(t, r.API); num(h["waiting"]) != 1 {
		t.Fatalf("held jobs waiting = %v with the only worker busy, want 1", h["waiting"])
	}
	if res := get(t, r.Front+wire.PathVideos+"/"+id); res.Status != 200 || res.JSON(t)["status"] != "queued" {
		t.Fatalf("poll of a waiting job = %d %s", res.Status, res.Body)
	}
	if res := get(t, r.Front+wire.PathVideos+"/"+id+"/content"); res.Status != 400 {
		t.Fatalf("content of a waiting job = %d %s, want 400 as a worker answers for an unfinished job", res.Status, res.Body)
	}
	var list struct {
		Data []map[string]any `json:"data"`
	}
	if err := json.Unmarshal(get(t, r.Front+wire.PathVideos).Body, &list); err != nil ||
		!slices.ContainsFunc(list.Data, func(j map[string]any) bool { return j["id"] == id }) {
		t.Fatalf("the job list does not show the waiting job %s: %v %v", id, err, list.Data)
	}
	del := do(t, http.MethodDelete, r.Front+wire.PathVideos+"/"+id, "", nil)
	if del.Status != 200 || del.JSON(t)["deleted"] != true {
		t.Fatalf("delete of a waiting job = %d %s", del.Status, del.Body)
	}
	if res := get(t, r.Front+wire.PathVideos+"/"+id); res.Status != 404 {
		t.Fatalf("poll after delete = %d %s, want 404", res.Status, res.Body)
	}
	waitCompleted(t, r.Front, first["id"].(string), time.Minute)
	// A job created after the deleted one completes: the deleted one,
	// ahead of it, would have run by then.
	last := createVideo(t, r.Front, map[string]any{"prompt": "last", "num_inference_steps": 2, "size": "512x512"})
	waitCompleted(t, r.Front, last["id"].(string), time.Minute)
	prompts := map[string]int{}
	workerPrompts(t, ws[0], prompts)
	if prompts["deleted"] != 0 || prompts["first"] != 1 || prompts["last"] != 1 {
		t.Fatalf("the worker was given %v; the deleted job must never reach it", prompts)
	}
	if h := heldStatus(t, r.API); num(h["deleted"]) != 1 {
		t.Fatalf("held jobs deleted = %v, want 1", h["deleted"])
	}
}

// kill -9 of the control plane with 32 jobs waiting in it: after a restart
// with the same flags, all 32 run, each once.
func TestHeldJobsSurviveKill(t *testing.T) {
	t.Parallel()
	ws, urls := startFleet(t, 2, "--task-type", "T2V", "--time-scale", "1")
	dir := t.TempDir()
	args := append([]string{"--state-dir", dir, "--port", strconv.Itoa(freePort(t)), "--queue", "--worker-urls"}, urls...)
	r := launchRouter(t, nil, args...)
	// Both workers busy for a while: what follows waits in the router.
	var long []string
	for i := range 2 {
		long = append(long, createVideo(t, r.Front, map[string]any{"prompt": "long " + strconv.Itoa(i), "num_inference_steps": 8, "size": "512x512"})["id"].(string))
	}
	var ids []string
	for i := range 32 {
		ids = append(ids, createVideo(t, r.Front, map[string]any{"prompt": "held " + strconv.Itoa(i), "num_inference_steps": 1, "size": "256x256"})["id"].(string))
	}
	if h := heldStatus(t, r.API); num(h["waiting"]) != 32 || num(h["sent"]) != 0 {
		t.Fatalf("before the kill: held %v, want 32 waiting and none sent", h)
	}
	r.kill()
	r2 := launchRouter(t, nil, args...)
	for _, id := range append(long, ids...) {
		waitCompleted(t, r2.Front, id, 3*time.Minute)
	}
	prompts := map[string]int{}
	for _, w := range ws {
		workerPrompts(t, w, prompts)
	}
	for i := range 32 {
		if got := prompts["held "+strconv.Itoa(i)]; got != 1 {
			t.Fatalf("held job %d reached the workers %d times, want once (all: %v)", i, got, prompts)
		}
	}
	if h := heldStatus(t, r2.API); num(h["resent"]) != 0 || num(h["sent"]) != 32 {
		t.Fatalf("after the restart: held %v, want 32 sent, none again", h)
	}
}

func jsonBody(v any) *bytes.Reader {
	b, _ := json.Marshal(v)
	return bytes.NewReader(b)
}

// jobWorker is the worker (its X-Worker-Id) a created job runs on: the
// create's answer names it, or, for a job the router held, the first poll
// that its worker answers.
func jobWorker(t *testing.T, front string, create response) string {
	t.Helper()
	if w := create.Header.Get("X-Worker-Id"); w != "" {
		return w
	}
	id, _ := create.JSON(t)["id"].(string)
	var worker string
	eventually(t, time.Minute, "held job "+id+" to reach its worker", func() bool {
		worker = get(t, front+wire.PathVideos+"/"+id).Header.Get("X-Worker-Id")
		return worker != ""
	})
	return worker
}

// Two Envoys, one set of jobs: a job held through one Envoy is polled,
// listed and deleted through the other while it waits, and a job held
// through one completes when polled through the other.
func TestHeldJobsAcrossEnvoys(t *testing.T) {
	t.Parallel()
	ws, urls := startFleet(t, 1, "--task-type", "T2V", "--time-scale", "1")
	front, _, admins := startLeastWorkReplicas(t, urls, "--queue", "--held-jobs-envoy", "http://127.0.0.1:{front}")
	via := clientPerEnvoy(t, "http://127.0.0.1:"+strconv.Itoa(front), admins)
	a, b := admins[0], admins[1]
	send := func(admin, method, path, body string) map[string]any {
		t.Helper()
		code, raw, err := via.send(admin, method, path, body)
		var v map[string]any
		if err != nil || json.Unmarshal(raw, &v) != nil {
			t.Fatalf("%s %s via %s: %d %s %v", method, path, admin, code, raw, err)
		}
		v["status_code"] = float64(code)
		return v
	}
	send(a, "POST", wire.PathVideos, `{"prompt":"first","num_inference_steps":8,"size":"512x512"}`)
	held := send(a, "POST", wire.PathVideos, `{"prompt":"deleted","num_inference_steps":1,"size":"256x256"}`)
	id, _ := held["id"].(string)
	if held["status"] != "queued" || id == "" {
		t.Fatalf("second create via one Envoy: %v", held)
	}
	if v := send(b, "GET", wire.PathVideos+"/"+id, ""); v["status_code"] != 200.0 || v["status"] != "queued" {
		t.Fatalf("poll via the other Envoy: %v", v)
	}
	list := send(b, "GET", wire.PathVideos, "")
	data, _ := list["data"].([]any)
	if !slices.ContainsFunc(data, func(d any) bool { return d.(map[string]any)["id"] == id }) {
		t.Fatalf("list via the other Envoy does not show the held job: %v", list)
	}
	if v := send(b, "DELETE", wire.PathVideos+"/"+id, ""); v["deleted"] != true {
		t.Fatalf("delete via the other Envoy: %v", v)
	}
	if v := send(a, "GET", wire.PathVideos+"/"+id, ""); v["status_code"] != 404.0 {
		t.Fatalf("poll via the first Envoy after the delete: %v", v)
	}
	last := send(b, "POST", wire.PathVideos, `{"prompt":"last","num_inference_steps":1,"size":"256x256"}`)
	lastID, _ := last["id"].(string)
	eventually(t, time.Minute, "the job held via one Envoy to complete, polled via the other", func() bool {
		return send(a, "GET", wire.PathVideos+"/"+lastID, "")["status"] == "completed"
	})
	prompts := map[string]int{}
	workerPrompts(t, ws[0], prompts)
	if prompts["deleted"] != 0 || prompts["first"] != 1 || prompts["last"] != 1 {
		t.Fatalf("the worker was given %v", prompts)
	}
}
