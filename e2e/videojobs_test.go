package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

// videoJob is a job as its client saw it when it was created.
type videoJob struct {
	id, version, model string
}

// createVideos creates n video jobs through send and returns them.
func createVideos(t *testing.T, n int, send func(body string) (map[string]any, http.Header)) []videoJob {
	t.Helper()
	var jobs []videoJob
	for i := range n {
		v, h := send(fmt.Sprintf(`{"prompt":"clip %d","num_inference_steps":20,"size":"512x512"}`, i))
		jobs = append(jobs, videoJob{id: v["id"].(string), version: h.Get(wire.HeaderWeightVersion), model: fmt.Sprint(v["model"])})
		if jobs[i].version == "" {
			t.Fatalf("create answered without %s", wire.HeaderWeightVersion)
		}
	}
	return jobs
}

// checkVideoVersions polls every job to its end through get and checks
// that each poll, the finished job and its content name the version the
// job was created under, and that the worker made it with that version's
// weights (the job's "model" is the model path that produced it).
func checkVideoVersions(t *testing.T, jobs []videoJob, modelOf map[string]string, get func(path string) (int, http.Header, map[string]any)) {
	t.Helper()
	// Every worker's list hands out the ids the creates did (versions
	// signed in), whichever Envoy signs it.
	listed := map[string]bool{}
	eventually(t, 10*time.Second, "every job in a list", func() bool {
		code, _, v := get("/v1/videos?limit=100")
		if code != 200 {
			t.Fatalf("list = %d %v", code, v)
		}
		data, _ := v["data"].([]any)
		for _, d := range data {
			listed[fmt.Sprint(d.(map[string]any)["id"])] = true
		}
		for _, j := range jobs {
			if !listed[j.id] {
				return false
			}
		}
		return true
	})
	for _, j := range jobs {
		var done map[string]any
		eventually(t, 30*time.Second, "job "+j.id+" to complete", func() bool {
			code, h, v := get("/v1/videos/" + j.id)
			if code != 200 {
				t.Fatalf("poll %s = %d %v", j.id, code, v)
			}
			if got := h.Get(wire.HeaderWeightVersion); got != j.version {
				t.Fatalf("poll of a job created under version %s answered %s: %s", j.version, wire.HeaderWeightVersion, got)
			}
			done = v
			return v["status"] == "completed"
		})
		if done["model"] != modelOf[j.version] {
			t.Fatalf("job created under version %s (model %s) was made by %v", j.version, modelOf[j.version], done["model"])
		}
		if done["id"] != j.id {
			t.Fatalf("completed job's id %v, want %s (the id it was created with)", done["id"], j.id)
		}
		code, h, _ := get("/v1/videos/" + j.id + "/content")
		if code != 200 || h.Get(wire.HeaderWeightVersion) != j.version {
			t.Fatalf("content of %s = %d with version %q, want %s", j.id, code, h.Get(wire.HeaderWeightVersion), j.version)
		}
		code, h, _ = get("/v1/videos?video_id=" + j.id)
		if code != 200 || h.Get(wire.HeaderWeightVersion) != j.version {
			t.Fatalf("list of %s = %d with version %q, want %s", j.id, code, h.Get(wire.HeaderWeightVersion), j.version)
		}
	}
}

// TestVideoJobsKeepTheirWeightVersion: video jobs created under one weight
// version and still running when the fleet switches to the next are
// labelled, in every answer about them, with the version that made them,
// in both update modes; jobs created after the switch name the new one.
func TestVideoJobsKeepTheirWeightVersion(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"drain", "inplace"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ws, urls := startFleet(t, 2, "--task-type", "T2V", "--time-scale", "0.01")
			// Jobs made on a worker under one version: a job the router
			// held is made by the weights its worker has when it is sent
			// (TestVideoCreatesAnswerAtOnce).
			r := startRouter(t, append([]string{"--hold-video-jobs=false", "--worker-urls"}, urls...)...)
			send := func(body string) (map[string]any, http.Header) {
				resp := do(t, "POST", r.Front+"/v1/videos", "application/json", strings.NewReader(body))
				if resp.Status != 200 {
					t.Fatalf("create = %d %s", resp.Status, resp.Body)
				}
				return resp.JSON(t), resp.Header
			}
			before := createVideos(t, 4, send)
			if stats(t, ws[0]).ServedTotal+stats(t, ws[1]).ServedTotal == 4 {
				t.Fatal("every job finished before the update: the test shows nothing")
			}
			up := postJSON(t, r.Front+"/update_weights_from_disk", map[string]any{"model_path": "/ckpt/step-1", "weight_version": "step-1", "mode": mode})
			if up.Status != 200 {
				t.Fatalf("%s update = %d %s", mode, up.Status, up.Body)
			}
			after := createVideos(t, 2, send)
			modelOf := map[string]string{before[0].version: before[0].model, "step-1": "/ckpt/step-1"}
			for _, j := range after {
				if j.version != "step-1" {
					t.Fatalf("job created after the update answered version %s", j.version)
				}
			}
			get := func(path string) (int, http.Header, map[string]any) {
				resp := get(t, r.Front+path)
				var v map[string]any
				if resp.Header.Get("Content-Type") == "application/json" {
					v = resp.JSON(t)
				}
				return resp.Status, resp.Header, v
			}
			checkVideoVersions(t, append(before, after...), modelOf, get)
		})
	}
}

// TestVideoJobVersionAcrossEnvoys: a job created through one Envoy and
// polled through another after a drain-mode update names the version it was
// made under.
func TestVideoJobVersionAcrossEnvoys(t *testing.T) {
	t.Parallel()
	_, urls := startFleet(t, 2, "--task-type", "T2V", "--time-scale", "0.01")
	front, api, admins := startLeastWorkReplicas(t, urls)
	via := clientPerEnvoy(t, "http://127.0.0.1:"+strconv.Itoa(front), admins)
	creator, poller := admins[0], admins[1]
	jobs := createVideos(t, 3, func(body string) (map[string]any, http.Header) {
		return via.callHeaders(t, creator, "POST", "/v1/videos", body)
	})
	up := postJSON(t, api+"/update_weights_from_disk", map[string]any{"model_path": "/ckpt/step-1", "weight_version": "step-1", "mode": "drain"})
	if up.Status != 200 {
		t.Fatalf("drain update = %d %s", up.Status, up.Body)
	}
	checkVideoVersions(t, jobs, map[string]string{jobs[0].version: jobs[0].model}, func(path string) (int, http.Header, map[string]any) {
		code, h, b, err := via.sendHeaders(poller, "GET", path, "")
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if h.Get("Content-Type") == "application/json" {
			_ = json.Unmarshal(b, &v)
		}
		return code, h, v
	})
}

// TestLargeVideoAnswersKeepSignedIDs: a create whose answer is over the
// filter's request-reading limit (a 70,000-character prompt, echoed back)
// comes back with a signed id that polls; one too large to hold at all
// is refused with a JSON 502 rather than handing out an id that could never
// be polled; a GET on the seed router's /generate_video is 405, not a raw
// job list.
func TestLargeVideoAnswersKeepSignedIDs(t *testing.T) {
	t.Parallel()
	_, urls := startFleet(t, 1, "--task-type", "T2V")
	r := startRouter(t, "--worker-urls", strings.Join(urls, ","))
	for _, path := range []string{"/v1/videos", "/generate_video"} {
		long := strings.Repeat("a", 70_000)
		resp := postJSON(t, r.Front+path, map[string]any{"prompt": long, "num_inference_steps": 2, "size": "256x256"})
		if resp.Status != 200 {
			t.Fatalf("%s with a long prompt = %d", path, resp.Status)
		}
		id, _ := resp.JSON(t)["id"].(string)
		if strings.Count(id, ".") < 2 {
			t.Fatalf("%s with a long prompt answered the raw id %q", path, id)
		}
		eventually(t, 15*time.Second, "the job to poll", func() bool {
			p := get(t, r.Front+"/v1/videos/"+id)
			if p.Status != 200 {
				t.Fatalf("poll of %s = %d %s", id, p.Status, p.Body)
			}
			return p.JSON(t)["status"] == "completed"
		})
	}
	huge := postJSON(t, r.Front+"/v1/videos", map[string]any{"prompt": strings.Repeat("b", 1_200_000), "num_inference_steps": 2, "size": "256x256"})
	if huge.Status != 502 || !strings.Contains(fmt.Sprint(huge.JSON(t)["error"]), "sign the job ids") {
		t.Fatalf("create with a 1.2 MB prompt = %d %.300s", huge.Status, huge.Body)
	}
	for _, m := range []string{"GET", "PUT", "DELETE"} {
		for _, path := range []string{"/generate_video", "/generate"} {
			resp := do(t, m, r.Front+path, "", nil)
			if resp.Status != 405 || resp.JSON(t)["error"] == nil {
				t.Fatalf("%s %s = %d %s", m, path, resp.Status, resp.Body)
			}
		}
	}
}

// TestFinishedJobsStopCountingUnpolled: video jobs nobody polls stop
// counting on their workers within seconds of finishing, from the
// worker's own word: its scheduler gauges (/metrics) where it serves them,
// else its job list. Image requests then reach every worker again.
func TestFinishedJobsStopCountingUnpolled(t *testing.T) {
	t.Parallel()
	for _, metrics := range []bool{true, false} {
		name := "with worker metrics"
		args := []string{"--task-type", "T2V", "--time-scale", "0.01"}
		if !metrics {
			name, args = "job list only", append(args, "--no-metrics")
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ws, urls := startFleet(t, 2, args...)
			r := startRouter(t, "--worker-urls", strings.Join(urls, ","))
			eventually(t, 10*time.Second, "the filter to pick", func() bool {
				_, err := tryDo(context.Background(), "POST", r.Front+"/v1/images/generations", "application/json", strings.NewReader(`{"prompt":"p","num_inference_steps":1,"size":"64x64"}`))
				return err == nil && envoyStat(t, r.Admin, "wasmcustom.diffusion_router.pick.picked") > 0
			})
			for i := range 6 {
				if resp := postJSON(t, r.Front+"/v1/videos", map[string]any{"prompt": fmt.Sprint("unpolled ", i), "num_inference_steps": 8, "size": "512x512"}); resp.Status != 200 {
					t.Fatalf("create = %d %s", resp.Status, resp.Body)
				}
			}
			eventually(t, 5*time.Second, "the jobs to count", func() bool { w, _ := outstanding(t, r.Admin); return w > 0 })
			eventually(t, 30*time.Second, "the workers to finish all six jobs", func() bool {
				return stats(t, ws[0]).Served["video"]+stats(t, ws[1]).Served["video"] == 6
			})
			finished := time.Now()
			eventually(t, 10*time.Second, "the finished jobs to stop counting with no poll", func() bool {
				w, n := outstanding(t, r.Admin)
				return w == 0 && n == 0
			})
			t.Logf("stopped counting %v after the last job finished", time.Since(finished).Round(100*time.Millisecond))
			by := map[string]int{}
			for range 20 {
				resp := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "p", "num_inference_steps": 2, "size": "256x256"})
				by[resp.Header.Get("X-Worker-Id")]++
			}
			if by[ws[0].ID] == 0 || by[ws[1].ID] == 0 {
				t.Fatalf("image requests after the jobs went to %v", by)
			}
		})
	}
}

// startWordFleet runs two video workers at real speed (a 20-step 512x512
// video takes several seconds) behind a least-work router whose filter
// picks, and returns them with an image sender that counts who served.
func startWordFleet(t *testing.T) ([]*fakeWorker, *routerProc, func(n int) map[string]int) {
	t.Helper()
	ws, urls := startFleet(t, 2, "--task-type", "T2V", "--time-scale", "1")
	r := startRouter(t, "--worker-urls", strings.Join(urls, ","))
	images := func(n int) map[string]int {
		by := map[string]int{}
		for range n {
			resp := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "p", "num_inference_steps": 1, "size": "64x64"})
			if resp.Status != 200 {
				t.Fatalf("image = %d %s", resp.Status, resp.Body)
			}
			by[resp.Header.Get("X-Worker-Id")]++
		}
		return by
	}
	eventually(t, 10*time.Second, "the filter to pick", func() bool {
		_, err := tryDo(context.Background(), "POST", r.Front+"/v1/images/generations", "application/json", strings.NewReader(`{"prompt":"p","num_inference_steps":1,"size":"64x64"}`))
		return err == nil && envoyStat(t, r.Admin, "wasmcustom.diffusion_router.pick.picked") > 0
	})
	return ws, r, images
}

// TestDeletedRunningJobCounts: sglang-diffusion forgets a deleted job but
// keeps computing it, so it keeps counting on its worker while the worker
// says it runs: new requests go elsewhere meanwhile.
func TestDeletedRunningJobCounts(t *testing.T) {
	t.Parallel()
	ws, r, images := startWordFleet(t)
	running := func(w *fakeWorker) bool { return stats(t, w).QueueDepth > 0 }
	job := postJSON(t, r.Front+"/v1/videos", map[string]any{"prompt": "long", "num_inference_steps": 20, "size": "512x512"})
	id, _ := job.JSON(t)["id"].(string)
	holder := job.Header.Get("X-Worker-Id")
	if del := do(t, "DELETE", r.Front+"/v1/videos/"+id, "", nil); del.Status != 200 {
		t.Fatalf("delete = %d %s", del.Status, del.Body)
	}
	var busy *fakeWorker
	for _, w := range ws {
		if w.ID == holder {
			busy = w
		}
	}
	if !running(busy) {
		t.Fatal("the deleted job is not running: the test shows nothing")
	}
	if by := images(4); by[holder] != 0 || !running(busy) {
		t.Fatalf("while the deleted job ran, images went to %v (the holder is %s)", by, holder)
	}
	eventually(t, 30*time.Second, "the deleted job to stop counting once its worker is idle", func() bool {
		w, n := outstanding(t, r.Admin)
		return !running(busy) && w == 0 && n == 0
	})
}

// TestForeignWorkCounts: work another client sent to a worker directly
// counts, from the worker's own word: requests go elsewhere while it runs.
func TestForeignWorkCounts(t *testing.T) {
	t.Parallel()
	ws, r, images := startWordFleet(t)
	images(6) // both measured
	direct := postJSON(t, ws[0].URL+"/v1/videos", map[string]any{"prompt": "not through the router", "num_inference_steps": 100, "size": "512x512"})
	if direct.Status != 200 {
		t.Fatalf("direct create = %d", direct.Status)
	}
	eventually(t, 5*time.Second, "the control plane to hear of the foreign job", func() bool {
		v, _ := workersByURL(t, r.API)[ws[0].URL]["worker_running"].(float64)
		return v == 1
	})
	gauge := "wasmcustom.diffusion_router.pick.foreign_requests." + strings.NewReplacer(".", "_", ":", "_").Replace(strings.TrimPrefix(ws[0].URL, "http://"))
	eventually(t, 5*time.Second, "the filter to count the foreign job", func() bool { return envoyStat(t, r.Admin, gauge) == 1 })
	if by := images(4); by[ws[0].ID] != 0 || stats(t, ws[0]).QueueDepth == 0 {
		t.Fatalf("while another client's job ran on %s, images went to %v", ws[0].ID, by)
	}
}
