package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/png"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A worker that streams a large answer (chunked, no Content-Length) must
// reach the client whole through the filter: the filter holds at most its
// own limit and then streams, never letting Envoy's buffer limit cut the
// answer into an empty or truncated 200.
func TestLargeStreamedAnswersArriveWhole(t *testing.T) {
	// A short head is flushed first, then pieces of 20 MiB: the shape that
	// made Envoy cut held answers once a piece took them past 1 MiB.
	w := startWorker(t, "--stream-chunk-bytes", fmt.Sprint(20<<20))
	r := startRouter(t, "--worker-urls", w.URL)
	eventually(t, 20*time.Second, "router healthy", func() bool { return get(t, r.Front+"/health").Status == 200 })

	for _, size := range []int{64 << 10, 1 << 20, 5 << 20, 20 << 20} {
		for _, format := range []string{"b64_json", "url"} {
			t.Run(fmt.Sprintf("%dKiB-%s", size>>10, format), func(t *testing.T) {
				body, err := json.Marshal(map[string]any{"prompt": strings.Repeat("a", size), "num_inference_steps": 1,
					"response_format": format, "seed": 3})
				if err != nil {
					t.Fatal(err)
				}
				direct := do(t, http.MethodPost, w.URL+"/v1/images/generations", "application/json", bytes.NewReader(body))
				routed := do(t, http.MethodPost, r.Front+"/v1/images/generations", "application/json", bytes.NewReader(body))
				if direct.Status != 200 || routed.Status != 200 {
					t.Fatalf("status direct %d, routed %d", direct.Status, routed.Status)
				}
				if len(routed.Body) < size {
					t.Fatalf("routed answer has %d bytes for a %d-byte prompt echoed back (direct: %d)", len(routed.Body), size, len(direct.Body))
				}
				// Both answers are the same but for what differs per request.
				if d, g := stable(t, direct.Body), stable(t, routed.Body); !bytes.Equal(d, g) {
					t.Fatalf("routed answer differs from direct beyond per-request fields (%d vs %d bytes)", len(g), len(d))
				}
			})
		}
	}
	if n := envoyStat(t, r.Admin, "http.front.rs_too_large"); n != 0 {
		t.Fatalf("Envoy cut %d answers for size", n)
	}
}

// stable is an image answer without the fields that differ between two
// generations of the same request, re-encoded for byte comparison.
func stable(t *testing.T, body []byte) []byte {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("answer is not JSON (%d bytes): %v", len(body), err)
	}
	for _, k := range []string{"id", "created", "inference_time_s", "worker_id"} {
		delete(v, k)
	}
	for _, d := range v["data"].([]any) {
		item := d.(map[string]any)
		delete(item, "file_path")
		if u, ok := item["url"].(string); ok {
			// The id differs per request (and is wrapped by the router);
			// the shape must not.
			item["url"] = strings.Split(u, "/")[1] + "/" + strings.Split(u, "/")[2]
		}
	}
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func envoyStat(t *testing.T, admin, name string) int {
	t.Helper()
	r := get(t, admin+"/stats?filter=^"+strings.ReplaceAll(name, ".", `\.`)+"$")
	var n int
	for _, line := range strings.Split(string(r.Body), "\n") {
		if v, ok := strings.CutPrefix(line, name+": "); ok {
			fmt.Sscan(v, &n)
		}
	}
	return n
}

// Every image of an n > 1 answer keeps its ?variant=N through the router's
// id rewriting, and each URL fetches its own image.
func TestImageVariantsSurviveRewrite(t *testing.T) {
	w := startWorker(t)
	r := startRouter(t, "--worker-urls", w.URL)
	eventually(t, 20*time.Second, "router healthy", func() bool { return get(t, r.Front+"/health").Status == 200 })
	res := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "two foxes", "n": 2, "num_inference_steps": 1})
	if res.Status != 200 {
		t.Fatalf("generate: %d %s", res.Status, res.Body)
	}
	var doc struct {
		Data []struct {
			URL string `json:"url"`
		} `json:"data"`
	}
	if err := json.Unmarshal(res.Body, &doc); err != nil || len(doc.Data) != 2 {
		t.Fatalf("answer: %v %s", err, res.Body)
	}
	images := map[string]bool{}
	for i, d := range doc.Data {
		if !strings.HasSuffix(d.URL, fmt.Sprintf("/content?variant=%d", i)) {
			t.Fatalf("image %d url %q lost its variant", i, d.URL)
		}
		img := get(t, r.Front+d.URL)
		if img.Status != 200 {
			t.Fatalf("GET %s: %d %s", d.URL, img.Status, img.Body)
		}
		if _, err := png.Decode(bytes.NewReader(img.Body)); err != nil {
			t.Fatalf("image %d is not a PNG: %v", i, err)
		}
		images[string(img.Body)] = true
	}
	if len(images) != 2 {
		t.Fatalf("the two URLs fetched %d distinct images", len(images))
	}
}

// /health counts only workers Envoy would route to: a worker just added
// whose server is down is not healthy, not even before Envoy's first
// health check of it.
func TestHealthRightAfterAddingADownWorker(t *testing.T) {
	r := startRouter(t, "--health-check-interval", "3600")
	down := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	if res := postJSON(t, r.Front+"/add_worker", map[string]any{"url": down}); res.Status != 200 ||
		res.JSON(t)["routable"] != false || res.JSON(t)["not_routable_because"] == nil {
		t.Fatalf("add_worker of a down worker: %d %s (want routable false, and why)", res.Status, res.Body)
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		h := get(t, r.Front+"/health")
		if h.Status != 503 || h.JSON(t)["healthy_workers"] != 0.0 {
			t.Fatalf("/health with only a down worker: %d %s", h.Status, h.Body)
		}
		if res := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "x"}); res.Status < 500 {
			t.Fatalf("generation reached a down worker: %d", res.Status)
		}
	}
	w := startWorker(t)
	if res := postJSON(t, r.Front+"/add_worker", map[string]any{"url": w.URL}); res.Status != 200 || res.JSON(t)["routable"] != true {
		t.Fatalf("add_worker: %d %s", res.Status, res.Body)
	}
	if h := get(t, r.Front+"/health"); h.Status != 200 || h.JSON(t)["healthy_workers"] != 1.0 {
		t.Fatalf("/health right after adding a live worker: %d %s", h.Status, h.Body)
	}
}

// On a mixed fleet image requests and /v1/model_info go to image workers;
// with no image worker left they fall back to the others.
func TestImagesPreferImageWorkers(t *testing.T) {
	img := startWorker(t)
	vid := startWorker(t, "--task-type", "T2V", "--model-path", "Wan-AI/Wan2.2-T2V-A14B")
	r := startRouter(t, "--worker-urls", img.URL, vid.URL)
	eventually(t, 20*time.Second, "both workers healthy", func() bool {
		return get(t, r.Front+"/health").JSON(t)["healthy_workers"] == 2.0
	})
	for range 20 {
		res := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "x", "num_inference_steps": 1, "response_format": "b64_json"})
		if res.Status != 200 || res.Header.Get("X-Worker-Id") != img.ID {
			t.Fatalf("image request: %d from %q, want 200 from the image worker %q", res.Status, res.Header.Get("X-Worker-Id"), img.ID)
		}
		if info := get(t, r.Front+"/v1/model_info"); info.JSON(t)["task_type"] != "T2I" {
			t.Fatalf("/v1/model_info described %v", info.JSON(t))
		}
	}
	if res := postJSON(t, r.Front+"/remove_worker", map[string]any{"url": img.URL}); res.Status != 200 {
		t.Fatalf("remove: %d %s", res.Status, res.Body)
	}
	eventually(t, 20*time.Second, "image worker gone", func() bool { return len(listURLs(t, r.Front)) == 1 })
	res := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "x", "num_inference_steps": 1})
	if res.Header.Get("X-Worker-Id") != vid.ID {
		t.Fatalf("with no image worker the request went to %q (%d), want the video worker", res.Header.Get("X-Worker-Id"), res.Status)
	}
}
