package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"image/png"
	"net/url"
	"slices"
	"testing"
	"time"
)

// The seed router's own endpoints, called as the Miles rollout calls them:
// workers added with ?url= (the answer lists worker_urls), images from
// POST /generate, videos from POST /generate_video and then polled by id.
func TestSeedRouterEndpoints(t *testing.T) {
	img := startWorker(t)
	vid := startWorker(t, "--task-type", "T2V", "--model-path", "Wan-AI/Wan2.2-T2V-A14B")
	r := startRouter(t)

	add := func(u string) {
		t.Helper()
		res := do(t, "POST", r.Front+"/add_worker?url="+url.QueryEscape(u), "", nil)
		var v struct {
			WorkerURLs []string `json:"worker_urls"`
		}
		if err := json.Unmarshal(res.Body, &v); err != nil || res.Status != 200 || !slices.Contains(v.WorkerURLs, u) {
			t.Fatalf("add_worker %s: %d %s", u, res.Status, res.Body)
		}
	}
	add(img.URL)

	// An image-only fleet refuses videos, as the seed router does.
	if res := postJSON(t, r.Front+"/generate_video", map[string]any{"prompt": "waves"}); res.Status != 400 || res.JSON(t)["error"] == nil {
		t.Fatalf("/generate_video with no video worker: %d %s", res.Status, res.Body)
	}
	add(vid.URL)

	for range 5 {
		res := postJSON(t, r.Front+"/generate", map[string]any{"prompt": "a red fox", "response_format": "b64_json", "num_inference_steps": 2, "seed": 1})
		if res.Status != 200 || res.Header.Get("X-Worker-Id") != img.ID {
			t.Fatalf("/generate: %d from %q: %s", res.Status, res.Header.Get("X-Worker-Id"), res.Body)
		}
		var v struct {
			Data []struct {
				B64 string `json:"b64_json"`
			} `json:"data"`
		}
		if err := json.Unmarshal(res.Body, &v); err != nil || len(v.Data) != 1 {
			t.Fatalf("/generate answer: %v %s", err, res.Body)
		}
		pic, err := base64.StdEncoding.DecodeString(v.Data[0].B64)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := png.Decode(bytes.NewReader(pic)); err != nil {
			t.Fatalf("/generate image is not a PNG: %v", err)
		}
	}

	res := postJSON(t, r.Front+"/generate_video", map[string]any{"prompt": "waves", "num_inference_steps": 2})
	if res.Status != 200 || res.Header.Get("X-Worker-Id") != vid.ID {
		t.Fatalf("/generate_video: %d from %q: %s", res.Status, res.Header.Get("X-Worker-Id"), res.Body)
	}
	job := res.JSON(t)
	id, _ := job["id"].(string)
	if job["status"] != "queued" || id == "" {
		t.Fatalf("/generate_video answer: %v", job)
	}
	eventually(t, 20*time.Second, "video job completed", func() bool {
		p := get(t, r.Front+"/v1/videos/"+id)
		if p.Status != 200 {
			t.Fatalf("poll: %d %s", p.Status, p.Body)
		}
		return p.JSON(t)["status"] == "completed"
	})
	content := get(t, r.Front+"/v1/videos/"+id+"/content")
	if content.Status != 200 || content.Header.Get("Content-Type") != "video/mp4" {
		t.Fatalf("content: %d %s", content.Status, content.Header.Get("Content-Type"))
	}
}
