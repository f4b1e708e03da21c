package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// Doubled slashes are merged before routing and before the filter looks:
// registry calls reach the registry, and job paths with ids the router did
// not sign are refused, never sent to a worker.
func TestDoubledSlashesAndUnsignedJobPaths(t *testing.T) {
	img := startWorker(t)
	vid := startWorker(t, "--task-type", "T2V")
	r := startRouter(t, "--worker-urls", vid.URL)
	eventually(t, 20*time.Second, "router healthy", func() bool { return get(t, r.Front+"/health").Status == 200 })

	if res := postJSON(t, r.Front+"//add_worker", map[string]any{"url": img.URL}); res.Status != 200 || res.JSON(t)["added"] != true {
		t.Fatalf("//add_worker: %d %s", res.Status, res.Body)
	}
	if res := postJSON(t, r.Front+"//update_weights_from_disk", map[string]any{}); res.Status != 400 ||
		!strings.Contains(res.JSON(t)["error"].(string), "model_path") {
		t.Fatalf("//update_weights_from_disk did not reach the registry: %d %s", res.Status, res.Body)
	}
	before := stats(t, vid).ServedTotal + stats(t, img).ServedTotal
	for _, p := range []string{
		"//v1/videos/video_raw", "/v1//videos/video_raw", "/v1/videos//video_raw", "/v1/videos/video_raw/content/",
		"/v1/videos/video_raw/x", "/v1/images/img_raw/content?variant=1", "/v1/videos/",
	} {
		res := get(t, r.Front+p)
		if res.Status != 404 || !strings.Contains(string(res.Body), "not issued by this router") {
			t.Errorf("GET %s: %d %s; want the filter's 404", p, res.Status, res.Body)
		}
	}
	if after := stats(t, vid).ServedTotal + stats(t, img).ServedTotal; after != before {
		t.Fatalf("unsigned job paths reached a worker (%d -> %d requests)", before, after)
	}
}

// Every model id a worker lists routes to it, not only the first.
func TestEveryListedModelRoutes(t *testing.T) {
	w := startWorker(t, "--model-path", "alpha", "--extra-model-ids", "beta")
	other := startWorker(t, "--model-path", "gamma")
	r := startRouter(t, "--worker-urls", w.URL, other.URL)
	eventually(t, 20*time.Second, "both workers healthy", func() bool {
		return get(t, r.Front+"/health").JSON(t)["healthy_workers"] == 2.0
	})
	for _, model := range []string{"alpha", "beta", "alpha", "beta"} {
		res := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "x", "model": model, "num_inference_steps": 1})
		if res.Status != 200 || res.Header.Get("X-Worker-Id") != w.ID {
			t.Fatalf("model %s: %d from %q, want 200 from %s", model, res.Status, res.Header.Get("X-Worker-Id"), w.ID)
		}
	}
	res := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "x", "model": "gamma", "num_inference_steps": 1})
	if res.Status != 200 || res.Header.Get("X-Worker-Id") != other.ID {
		t.Fatalf("model gamma: %d from %q", res.Status, res.Header.Get("X-Worker-Id"))
	}
}

// localhost, 127.0.0.1 and [::1] with one port are one server: one worker.
func TestOneServerRegisteredOnce(t *testing.T) {
	w := startWorker(t)
	u, err := url.Parse(w.URL)
	if err != nil {
		t.Fatal(err)
	}
	r := startRouter(t)
	first := postJSON(t, r.Front+"/add_worker", map[string]any{"url": "http://127.0.0.1:" + u.Port()})
	if first.Status != 200 || first.JSON(t)["added"] != true {
		t.Fatalf("first add: %d %s", first.Status, first.Body)
	}
	for _, spelling := range []string{"http://localhost:" + u.Port(), "http://[::1]:" + u.Port()} {
		res := postJSON(t, r.Front+"/add_worker", map[string]any{"url": spelling})
		v := res.JSON(t)
		if res.Status != 200 || v["added"] != false || v["same_server_as"] != "http://127.0.0.1:"+u.Port() {
			t.Fatalf("add %s: %d %s", spelling, res.Status, res.Body)
		}
	}
	if urls := listURLs(t, r.Front); len(urls) != 1 {
		t.Fatalf("one server registered as %v", urls)
	}
}

// Every error on the front port is JSON, also for requests Envoy cannot
// normalise and paths the registry's HTTP server could not parse.
func TestMalformedPathsGetJSONErrors(t *testing.T) {
	r := startRouter(t, "--wasm-filter", "none")
	for _, p := range []string{"/add_worker%00", "/workers/%ZZ", "/workers/%4", "/v1/videos/%G0", "/a/%"} {
		res := rawGet(t, strings.TrimPrefix(r.Front, "http://"), p)
		v := res.JSON(t)
		if res.Status != 400 || !strings.HasPrefix(fmt.Sprint(v["error"]), "malformed") {
			t.Errorf("GET %s: %d %s; want 400 with a JSON error", p, res.Status, res.Body)
		}
	}
	// A well-formed escape still reaches the registry.
	if res := get(t, r.Front+"/workers/http%3A%2F%2F10.0.0.1%3A1"); res.Status != 404 || res.JSON(t)["error"] == nil {
		t.Fatalf("escaped worker id: %d %s", res.Status, res.Body)
	}
}

// rawGet sends a request line as given: Go's client refuses to build one
// with a broken escape, which is the point.
func rawGet(t *testing.T, hostport, path string) response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", hostport, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, hostport); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}
