package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestPythonRouterClientFlow is what sglang's bench_serving.py and the Python
// routers' clients do: poll /health, read /v1/model_info, post generations
// with response_format b64_json and decode the image.
func TestPythonRouterClientFlow(t *testing.T) {
	t.Parallel()
	a, b := startWorker(t, "--time-scale", "0.01"), startWorker(t, "--time-scale", "0.01")
	r := startRouter(t, "--worker-urls", a.URL, b.URL+"/")

	h := get(t, r.Front+"/health")
	if h.Status != 200 {
		t.Fatalf("/health = %d %s", h.Status, h.Body)
	}
	hv := h.JSON(t)
	if hv["status"] != "healthy" || hv["healthy_workers"] != 2.0 || hv["total_workers"] != 2.0 {
		t.Fatalf("/health = %v", hv)
	}
	if got := listURLs(t, r.Front); !slices.Equal(got, sortedStrings(a.URL, b.URL)) {
		t.Fatalf("list_workers = %v (trailing slash must normalise)", got)
	}
	info := get(t, r.Front+"/v1/model_info")
	if info.Status != 200 || info.JSON(t)["model_path"] == nil {
		t.Fatalf("/v1/model_info = %d %s", info.Status, info.Body)
	}
	// While one worker holds a long request, least-request sends every
	// new one to the other: both serve, deterministically.
	long := startLongRequest(r.Front)
	eventually(t, 10*time.Second, "the long request to reach a worker", func() bool {
		return stats(t, a).QueueDepth+stats(t, b).QueueDepth == 1
	})
	busy := a
	if stats(t, b).QueueDepth == 1 {
		busy = b
	}
	seen := map[string]bool{}
	for i := range 4 {
		resp := postJSON(t, r.Front+"/v1/images/generations", map[string]any{
			"prompt": fmt.Sprintf("a fox %d", i), "response_format": "b64_json", "size": "512x512", "num_inference_steps": 4,
		})
		if resp.Status != 200 {
			t.Fatalf("generation %d = %d %s", i, resp.Status, resp.Body)
		}
		checkPNG(t, resp)
		seen[resp.Header.Get("X-Worker-Id")] = true
	}
	if seen[busy.ID] || len(seen) != 1 {
		t.Fatalf("requests while %s was busy reached %v", busy.ID, seen)
	}
	if got := <-long; got.Status != 200 || got.Header.Get("X-Worker-Id") != busy.ID {
		t.Fatalf("long request = %d from %s", got.Status, got.Header.Get("X-Worker-Id"))
	}
	// The registry answers the same on its own port, which also serves the
	// control plane's Prometheus metrics.
	if d := get(t, r.API+"/list_workers"); d.Status != 200 {
		t.Fatalf("direct API list_workers = %d", d.Status)
	}
	m := string(get(t, r.API+"/metrics").Body)
	for _, want := range []string{`diffusion_router_workers{state="active"} 2`, `diffusion_router_envoys_connected{synced="true"} 1`, "diffusion_router_xds_pushes_total"} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Adding the same worker again is idempotent.
	again := postJSON(t, r.Front+"/add_worker", map[string]any{"url": a.URL + "/"})
	if again.Status != 200 || again.JSON(t)["added"] != false {
		t.Fatalf("re-add = %d %s", again.Status, again.Body)
	}
	if got := len(listURLs(t, r.Front)); got != 2 {
		t.Fatalf("%d workers after re-add, want 2", got)
	}
}

func sortedStrings(s ...string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return s
}

// TestWorkersResourceAndModels covers /workers/{id} and the merged /v1/models.
func TestWorkersResourceAndModels(t *testing.T) {
	t.Parallel()
	a := startWorker(t)
	b := startWorker(t) // same model as a
	v := startWorker(t, "--task-type", "T2V", "--model-path", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
	r := startRouter(t)
	for _, w := range []*fakeWorker{a, b} {
		// 200 and "success", as the Python routers answer.
		if resp := postJSON(t, r.Front+"/workers", map[string]any{"url": w.URL}); resp.Status != 200 || resp.JSON(t)["status"] != "success" {
			t.Fatalf("POST /workers = %d %s", resp.Status, resp.Body)
		}
	}
	if resp := do(t, "POST", r.Front+"/add_worker?url="+url.QueryEscape(v.URL), "", nil); resp.Status != 200 {
		t.Fatalf("add_worker = %d %s", resp.Status, resp.Body)
	}
	models := get(t, r.Front+"/v1/models").JSON(t)
	data, _ := models["data"].([]any)
	var ids []string
	for _, d := range data {
		ids = append(ids, d.(map[string]any)["id"].(string))
	}
	sort.Strings(ids)
	if want := []string{"Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "black-forest-labs/FLUX.1-dev"}; !slices.Equal(ids, want) {
		t.Fatalf("/v1/models ids = %v, want %v (merged, duplicates removed)", ids, want)
	}

	id := url.PathEscape(strings.NewReplacer(":", "%3A", "/", "%2F").Replace(v.URL))
	w := get(t, r.Front+"/workers/"+id)
	if w.Status != 200 {
		t.Fatalf("GET /workers/%s = %d %s", id, w.Status, w.Body)
	}
	wv, _ := w.JSON(t)["worker"].(map[string]any)
	for _, k := range []string{"worker_id", "display_id", "url", "state", "active_requests", "is_dead", "is_sleeping", "consecutive_failures"} {
		if _, ok := wv[k]; !ok {
			t.Errorf("worker object lacks %q: %v", k, wv)
		}
	}
	if wv["url"] != v.URL || wv["state"] != "active" || wv["video_support"] != true {
		t.Fatalf("worker = %v", wv)
	}
	// PUT is_dead true takes it out; false brings it back after /health.
	put := do(t, "PUT", r.Front+"/workers/"+id, "application/json", strings.NewReader(`{"is_dead": true}`))
	putWorker := func() map[string]any { v, _ := put.JSON(t)["worker"].(map[string]any); return v }
	if put.Status != 200 || put.JSON(t)["status"] != "success" || putWorker()["is_dead"] != true || putWorker()["state"] != "quarantined" {
		t.Fatalf("PUT is_dead=true = %d %s", put.Status, put.Body)
	}
	if resp := postJSON(t, r.Front+"/v1/videos", map[string]any{"prompt": "x"}); resp.Status != 503 {
		t.Fatalf("video with the only video worker quarantined = %d %s, want 503", resp.Status, resp.Body)
	}
	put = do(t, "PUT", r.Front+"/workers/"+id, "application/json", strings.NewReader(`{"is_dead": false}`))
	if put.Status != 200 || putWorker()["state"] != "active" {
		t.Fatalf("PUT is_dead=false = %d %s", put.Status, put.Body)
	}
	if resp := postJSON(t, r.Front+"/v1/videos", map[string]any{"prompt": "x"}); resp.Status != 200 {
		t.Fatalf("video after re-admission = %d %s", resp.Status, resp.Body)
	}
	del := do(t, "DELETE", r.Front+"/workers/"+id, "", nil)
	if del.Status != 200 || del.JSON(t)["status"] != "success" || del.JSON(t)["worker_id"] == nil {
		t.Fatalf("DELETE = %d %s", del.Status, del.Body)
	}
	eventually(t, 10*time.Second, "deleted worker to leave the registry", func() bool {
		return !slices.Contains(listURLs(t, r.Front), v.URL)
	})
	if resp := get(t, r.Front+"/workers/"+id); resp.Status != 404 || resp.JSON(t)["error"] == nil {
		t.Fatalf("GET deleted worker = %d %s", resp.Status, resp.Body)
	}
}

// TestVideoJobThroughRouter creates a video job and polls it to completion.
func TestVideoJobThroughRouter(t *testing.T) {
	t.Parallel()
	img := startWorker(t)
	vid := startWorker(t, "--task-type", "T2V")
	r := startRouter(t, "--worker-urls", img.URL, vid.URL)
	for range 3 {
		created := postJSON(t, r.Front+"/v1/videos", map[string]any{"prompt": "waves", "num_inference_steps": 4, "size": "256x256"})
		if created.Status != 200 {
			t.Fatalf("create = %d %s", created.Status, created.Body)
		}
		job := created.JSON(t)
		if job["status"] != "queued" || created.Header.Get("X-Worker-Id") != vid.ID {
			t.Fatalf("create answered %v from %s, want queued from the video worker", job, created.Header.Get("X-Worker-Id"))
		}
		id := job["id"].(string)
		eventually(t, 10*time.Second, "video job to complete", func() bool {
			p := get(t, r.Front+"/v1/videos/"+id)
			return p.Status == 200 && p.JSON(t)["status"] == "completed"
		})
		content := get(t, r.Front+"/v1/videos/"+id+"/content")
		if content.Status != 200 || !bytes.Contains(content.Body, []byte("ftyp")) {
			t.Fatalf("content = %d %q", content.Status, content.Body)
		}
	}
	if s := stats(t, img); s.Served["video"] != 0 {
		t.Fatalf("image worker served %d videos", s.Served["video"])
	}
}

// TestLargeMultipartUploadStreams sends a 20 MB image edit through Envoy.
func TestLargeMultipartUploadStreams(t *testing.T) {
	t.Parallel()
	w := startWorker(t, "--task-type", "TI2I")
	r := startRouter(t, "--worker-urls", w.URL)
	payload := make([]byte, 20<<20)
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range payload {
		payload[i] = byte(rng.Uint32())
	}
	sum := sha256.Sum256(payload)
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		_ = mw.WriteField("prompt", "make it blue")
		_ = mw.WriteField("response_format", "b64_json")
		part, err := mw.CreateFormFile("image", "big.png")
		if err == nil {
			_, err = part.Write(payload)
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	resp := do(t, "POST", r.Front+"/v1/images/edits", mw.FormDataContentType(), pr)
	if resp.Status != 200 {
		t.Fatalf("edit = %d %s", resp.Status, resp.Body)
	}
	if got := resp.Header.Get("X-Seen-Diffusion-Task"); got != "image-edit" {
		t.Errorf("worker saw task %q, want image-edit", got)
	}
	if got := resp.Header.Get("X-Seen-Diffusion-Model"); got != "" {
		t.Errorf("a multipart body was parsed for a model: %q", got)
	}
	v := resp.JSON(t)
	if v["input_bytes"] != float64(len(payload)) || v["input_sha256"] != hex.EncodeToString(sum[:]) {
		t.Fatalf("worker received %v bytes (sha %v), want %d (%x)", v["input_bytes"], v["input_sha256"], len(payload), sum)
	}
}

// TestJSONErrors: no workers, an unreachable worker, and every class of bad
// registry input answer JSON errors with the right status and change nothing.
func TestJSONErrors(t *testing.T) {
	t.Parallel()
	r := startRouter(t, "--max-retries", "0")

	for _, c := range []struct {
		method, path string
		body         string
		want         int
	}{
		{"POST", "/v1/images/generations", `{"prompt":"x"}`, 503},
		{"GET", "/v1/model_info", "", 503},
		{"POST", "/v1/videos", `{"prompt":"x"}`, 400},
		{"GET", "/health", "", 503},
		{"POST", "/update_weights_from_disk", `{"model_path":"/w"}`, 503},
	} {
		resp := do(t, c.method, r.Front+c.path, "application/json", strings.NewReader(c.body))
		if resp.Status != c.want {
			t.Errorf("%s %s with no workers = %d %s, want %d", c.method, c.path, resp.Status, resp.Body, c.want)
			continue
		}
		if c.path != "/health" {
			if _, ok := resp.JSON(t)["error"].(string); !ok {
				t.Errorf("%s %s: no error string in %s", c.method, c.path, resp.Body)
			}
		}
	}

	bad := []struct {
		name        string
		method, url string
		body        string
		want        int
	}{
		{"missing url", "POST", "/add_worker", "", 400},
		{"empty object", "POST", "/add_worker", `{}`, 400},
		{"malformed JSON", "POST", "/add_worker", `{"url": `, 400},
		{"not an object", "POST", "/add_worker", `["http://a:1"]`, 400},
		{"url not a string", "POST", "/add_worker", `{"url": 5}`, 400},
		{"ftp scheme", "POST", "/add_worker", `{"url": "ftp://10.0.0.1:1"}`, 400},
		{"file scheme", "POST", "/add_worker?url=" + url.QueryEscape("file:///etc/passwd"), "", 400},
		{"metadata IP", "POST", "/add_worker", `{"url": "http://169.254.169.254"}`, 400},
		{"link-local", "POST", "/workers", `{"url": "http://169.254.10.1:8000"}`, 400},
		{"metadata host", "POST", "/add_worker?url=" + url.QueryEscape("http://metadata.google.internal/"), "", 400},
		{"path in url", "POST", "/add_worker", `{"url": "http://10.0.0.1:1/v1"}`, 400},
		{"credentials", "POST", "/add_worker", `{"url": "http://u:p@10.0.0.1:1"}`, 400},
		{"too large", "POST", "/add_worker", `{"url": "` + strings.Repeat("a", 2<<20) + `"}`, 413},
		{"wrong method", "GET", "/add_worker", "", 405},
		{"unknown worker", "DELETE", "/workers/" + url.PathEscape("http://10.9.9.9:1"), "", 404},
		{"bad worker id", "GET", "/workers/not-a-url", "", 400},
		{"remove unknown", "POST", "/remove_worker", `{"url": "http://10.9.9.9:1"}`, 404},
		{"weights without model_path", "POST", "/update_weights_from_disk", `{"flush_cache": true}`, 400},
	}
	for _, base := range []string{r.Front, r.API} {
		for _, c := range bad {
			before := listURLs(t, base)
			resp := do(t, c.method, base+c.url, "application/json", strings.NewReader(c.body))
			if resp.Status != c.want {
				t.Errorf("%s via %s: status %d %s, want %d", c.name, base, resp.Status, resp.Body, c.want)
				continue
			}
			if msg, ok := resp.JSON(t)["error"].(string); !ok || msg == "" {
				t.Errorf("%s: no error message in %s", c.name, resp.Body)
			}
			if after := listURLs(t, base); !slices.Equal(before, after) {
				t.Errorf("%s changed the registry: %v -> %v", c.name, before, after)
			}
		}
	}

	// A worker that is registered but not reachable: a connection failure
	// is a 502 in JSON.
	w := startWorker(t)
	if resp := postJSON(t, r.Front+"/add_worker", map[string]any{"url": w.URL}); resp.Status != 200 {
		t.Fatalf("add = %d %s", resp.Status, resp.Body)
	}
	w.kill()
	resp := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "x"})
	if resp.Status != 502 {
		t.Fatalf("unreachable worker = %d %s, want 502", resp.Status, resp.Body)
	}
	if msg, _ := resp.JSON(t)["error"].(string); !strings.Contains(msg, "worker unreachable") {
		t.Fatalf("502 body = %s", resp.Body)
	}
}

// TestAddIsRoutableAndRemoveDrains: a worker is routable as soon as
// add_worker returns; a removed worker takes no new request, finishes the
// one it holds, then leaves the registry; no request fails.
func TestAddIsRoutableAndRemoveDrains(t *testing.T) {
	t.Parallel()
	slow := startWorker(t, "--time-scale", "0.01") // a 1000-step request takes ~1.4 s
	r := startRouter(t, "--worker-urls", slow.URL)

	long := startLongRequest(r.Front)
	eventually(t, 10*time.Second, "the long request to reach the slow worker", func() bool { return stats(t, slow).QueueDepth == 1 })

	fresh := startWorker(t)
	add := postJSON(t, r.Front+"/add_worker", map[string]any{"url": fresh.URL})
	if add.Status != 200 || add.JSON(t)["synced"] != true {
		t.Fatalf("add = %d %s", add.Status, add.Body)
	}
	// Routable at once: the next request goes to the idle new worker
	// (least-request), without any wait.
	first := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "x", "num_inference_steps": 2})
	if first.Status != 200 || first.Header.Get("X-Worker-Id") != fresh.ID {
		t.Fatalf("first request after add = %d from %q, want 200 from %s", first.Status, first.Header.Get("X-Worker-Id"), fresh.ID)
	}

	rm := postJSON(t, r.Front+"/remove_worker", map[string]any{"url": slow.URL})
	if rm.Status != 200 {
		t.Fatalf("remove = %d %s", rm.Status, rm.Body)
	}
	if st := rm.JSON(t)["worker"].(map[string]any)["state"]; st != "draining" {
		t.Fatalf("removed worker state = %v, want draining", st)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	failures, toSlow := 0, 0
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				resp, err := tryDo(context.Background(), "POST", r.Front+"/v1/images/generations", "application/json",
					strings.NewReader(`{"prompt":"x","num_inference_steps":2}`))
				mu.Lock()
				if err != nil || resp.Status != 200 {
					failures++
				} else if resp.Header.Get("X-Worker-Id") == slow.ID {
					toSlow++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if failures != 0 || toSlow != 0 {
		t.Fatalf("during the drain: %d failed requests, %d sent to the draining worker", failures, toSlow)
	}
	if got := <-long; got.Status != 200 || got.Header.Get("X-Worker-Id") != slow.ID {
		t.Fatalf("in-flight request on the draining worker = %d %s", got.Status, got.Body)
	}
	eventually(t, 15*time.Second, "the drained worker to leave the registry", func() bool {
		return !slices.Contains(listURLs(t, r.Front), slow.URL)
	})
	if s := stats(t, slow); s.ServedTotal != 1 {
		t.Fatalf("drained worker served %d requests, want exactly the one in flight", s.ServedTotal)
	}
	// Fleet changes travel over EDS and RDS only: the listener (and with it
	// every client connection) was never replaced.
	st := get(t, r.Admin+"/stats?filter=^listener_manager%5C.listener_(modified|removed)$")
	for _, line := range strings.Split(strings.TrimSpace(string(st.Body)), "\n") {
		if !strings.HasSuffix(line, ": 0") {
			t.Errorf("Envoy replaced its listener during fleet changes: %s", line)
		}
	}
	if !strings.Contains(string(st.Body), "listener_modified") {
		t.Fatalf("stats filter matched nothing: %q", st.Body)
	}
}

// TestEnvoyRestartedBySupervisor kills the router's Envoy; the router starts
// a new one, which gets the configuration over xDS again.
func TestEnvoyRestartedBySupervisor(t *testing.T) {
	t.Parallel()
	w := startWorker(t)
	r := startRouter(t, "--worker-urls", w.URL)
	pid := childPID(t, r.cmd.Process.Pid, "envoy")
	if err := killPID(pid); err != nil {
		t.Fatal(err)
	}
	r.waitOutput(regexpMust(`Envoy exited unexpectedly \(killed by signal killed\); restarting it`), 10*time.Second)
	eventually(t, 30*time.Second, "the restarted Envoy to serve", func() bool {
		resp, err := tryDo(context.Background(), "POST", r.Front+"/v1/images/generations", "application/json", strings.NewReader(`{"prompt":"x"}`))
		return err == nil && resp.Status == http.StatusOK
	})
	if newPID := childPID(t, r.cmd.Process.Pid, "envoy"); newPID == pid {
		t.Fatalf("Envoy pid unchanged (%d)", pid)
	}
}

// TestGracefulShutdown: on SIGTERM the front port stops taking connections,
// the request in flight finishes, then the router exits.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	slow := startWorker(t, "--time-scale", "0.01") // a 1000-step request takes ~1.4 s
	r := startRouter(t, "--shutdown-timeout", "30", "--worker-urls", slow.URL)
	long := startLongRequest(r.Front)
	eventually(t, 10*time.Second, "the long request to reach the worker", func() bool { return stats(t, slow).QueueDepth == 1 })
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the front port to refuse new connections", func() bool {
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(r.Front, "http://"), time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	if got := <-long; got.Status != 200 {
		t.Fatalf("request in flight at SIGTERM = %d %s", got.Status, got.Body)
	}
	select {
	case <-r.done:
	case <-time.After(20 * time.Second):
		t.Fatal("router did not exit after its last request")
	}
	if code := r.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("router exit code %d", code)
	}
	if !strings.Contains(r.out.String(), "all requests finished") {
		t.Fatal("the log does not say the drain completed")
	}
}

// TestAdminTokenOnBothPorts: with a token set (here through the environment,
// so it is not on the command line), fleet changes need it on the front port
// and the direct port alike; reads do not; answers never echo it.
func TestAdminTokenOnBothPorts(t *testing.T) {
	t.Parallel()
	w := startWorker(t)
	r := startRouterEnv(t, []string{"DIFFUSION_ROUTER_ADMIN_TOKEN=e2e-admin-token-123"})
	for _, base := range []string{r.Front, r.API} {
		body := `{"url":"` + w.URL + `"}`
		before := listURLs(t, base)
		denied := do(t, "DELETE", base+"/workers/"+strings.NewReplacer(":", "%3A", "/", "%2F").Replace(w.URL), "", nil)
		if len(before) == 0 {
			denied = do(t, "POST", base+"/add_worker", "application/json", strings.NewReader(body))
		}
		if denied.Status != 401 || strings.Contains(string(denied.Body), "e2e-admin-token-123") {
			t.Fatalf("%s without token = %d %s", base, denied.Status, denied.Body)
		}
		if after := listURLs(t, base); !slices.Equal(before, after) {
			t.Fatalf("an unauthorized call changed the registry: %v -> %v", before, after)
		}
		req, _ := http.NewRequest("POST", base+"/add_worker", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer e2e-admin-token-123")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s with token = %d", base, resp.StatusCode)
		}
	}
	if got := listURLs(t, r.Front); len(got) != 1 {
		t.Fatalf("workers = %v", got)
	}
	if gen := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "x"}); gen.Status != 200 {
		t.Fatalf("generation (no token needed) = %d", gen.Status)
	}
}

// startLongRequest sends a 1000-step generation in the background; the
// channel gets its answer.
func startLongRequest(front string) <-chan response {
	long := make(chan response, 1)
	go func() {
		resp, err := tryDo(context.Background(), "POST", front+"/v1/images/generations", "application/json",
			strings.NewReader(`{"prompt":"long","num_inference_steps":1000}`))
		if err != nil {
			resp = response{Status: -1, Body: []byte(err.Error())}
		}
		long <- resp
	}()
	return long
}

// checkPNG checks that a b64_json generation answer carries a real PNG.
func checkPNG(t *testing.T, resp response) {
	t.Helper()
	var v struct {
		Data []struct {
			B64 string `json:"b64_json"`
		} `json:"data"`
	}
	if err := json.Unmarshal(resp.Body, &v); err != nil || len(v.Data) != 1 {
		t.Errorf("generation body: %v %s", err, resp.Body)
		return
	}
	raw, err := base64.StdEncoding.DecodeString(v.Data[0].B64)
	if err != nil {
		t.Error(err)
		return
	}
	if _, err := png.Decode(bytes.NewReader(raw)); err != nil {
		t.Errorf("b64_json is not a PNG: %v", err)
	}
}
