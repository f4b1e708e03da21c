package tagger

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/diffrouter/diffusion-router/jobid"

	"github.com/diffrouter/diffusion-router/wire"
)

// wasmBinary is the plugin compiled for wasip1, so every test also runs
// against the real .wasm (under wazero) and not only natively.
var wasmBinary []byte

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tagger-wasm-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out := filepath.Join(dir, "plugin.wasm")
	build := exec.Command("go", "build", "-buildmode=c-shared", "-o", out, "../")
	build.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build the wasm plugin:", err)
		os.Exit(1)
	}
	if wasmBinary, err = os.ReadFile(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const testSecret = "0123456789abcdef-test-secret"

var testConfig = []byte(`{"secret":"` + testSecret + `","max_body_bytes":1024,"defaults":{"steps":50,"width":1024,"height":1024,"video_frames":16}}`)

// newVM is the plugin, natively ("go") or compiled ("wasm", under wazero).
func newVM(t *testing.T, runner string) types.VMContext {
	t.Helper()
	if runner == "go" {
		return NewVMContext()
	}
	v, err := proxytest.NewWasmVMContext(wasmBinary)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// eachRunner runs f natively and against the compiled .wasm.
func eachRunner(t *testing.T, f func(t *testing.T, host proxytest.HostEmulator)) {
	eachRunnerConfigured(t, testConfig, f)
}

// eachRunnerConfigured is eachRunner with the plugin configuration cfg.
func eachRunnerConfigured(t *testing.T, cfg []byte, f func(t *testing.T, host proxytest.HostEmulator)) {
	for _, runner := range []string{"go", "wasm"} {
		t.Run(runner, func(t *testing.T) {
			host, reset := proxytest.NewHostEmulator(proxytest.NewEmulatorOption().WithVMContext(newVM(t, runner)).WithPluginConfiguration(cfg))
			defer reset()
			if st := host.StartPlugin(); st != types.OnPluginStartStatusOK {
				t.Fatalf("plugin start = %v", st)
			}
			f(t, host)
		})
	}
}

func header(hs [][2]string, name string) (string, bool) {
	for _, h := range hs {
		if strings.EqualFold(h[0], name) {
			return h[1], true
		}
	}
	return "", false
}

func TestRequestTags(t *testing.T) {
	tests := []struct {
		name        string
		method      string
		path        string
		contentType string
		body        string
		wantTask    string
		wantModel   string
		wantCost    string
		wantPause   bool // headers held until the body is read
	}{
		{name: "image with model and size", method: "POST", path: "/v1/images/generations", contentType: "application/json",
			body: `{"prompt":"p","model":"flux","n":2,"num_inference_steps":10,"size":"512x512"}`, wantTask: "image", wantModel: "flux", wantCost: "5", wantPause: true},
		{name: "image with server defaults", method: "POST", path: "/v1/images/generations", contentType: "application/json",
			body: `{"prompt":"p"}`, wantTask: "image", wantCost: "50", wantPause: true},
		{name: "video uses frames", method: "POST", path: "/v1/videos", contentType: "application/json",
			body: `{"prompt":"p","model":"wan","num_inference_steps":4,"width":1024,"height":512}`, wantTask: "video", wantModel: "wan", wantCost: "32", wantPause: true},
		{name: "native", method: "POST", path: "/v1/diffusion/generate", contentType: "application/json",
			body: `{"prompt":"p","num_inference_steps":1,"size":"1024x1024"}`, wantTask: "native", wantCost: "1", wantPause: true},
		{name: "multipart edit streams", method: "POST", path: "/v1/images/edits", contentType: "multipart/form-data; boundary=x",
			body: "--x--", wantTask: "image-edit"},
		{name: "body over the limit streams", method: "POST", path: "/v1/images/generations", contentType: "application/json",
			body: `{"prompt":"` + strings.Repeat("a", 2000) + `"}`, wantTask: "image"},
		{name: "broken JSON passes", method: "POST", path: "/v1/images/generations", contentType: "application/json",
			body: `{"prompt":`, wantTask: "image", wantPause: true},
		{name: "poll", method: "GET", path: "/v1/videos", wantTask: "video-poll"},
		{name: "control", method: "POST", path: "/update_weights_from_disk", contentType: "application/json", body: `{}`, wantTask: "control"},
		{name: "other", method: "GET", path: "/v1/model_info", wantTask: "other"},
	}
	// One plugin per runner for the whole table: compiling the .wasm is the
	// slow part, and contexts are independent.
	eachRunner(t, func(t *testing.T, host proxytest.HostEmulator) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				before, _ := host.GetCounterMetric("diffusion_router.requests." + tt.wantTask)
				id := host.InitializeHttpContext()
				hs := [][2]string{{":method", tt.method}, {":path", tt.path}, {":authority", "router"},
					// Spoofed tags: replaced or removed, never trusted.
					{wire.HeaderTask, "control"}, {wire.HeaderModel, "spoofed"}, {wire.HeaderCost, "1"}, {wire.HeaderTarget, "ffffffffffffffff"}}
				if tt.contentType != "" {
					hs = append(hs, [2]string{"content-type", tt.contentType}, [2]string{"content-length", fmt.Sprint(len(tt.body))})
				}
				action := host.CallOnRequestHeaders(id, hs, tt.body == "")
				if (action == types.ActionPause) != tt.wantPause {
					t.Fatalf("headers action = %v, want pause=%v", action, tt.wantPause)
				}
				if tt.body != "" {
					if a := host.CallOnRequestBody(id, []byte(tt.body), true); a != types.ActionContinue {
						t.Fatalf("body action = %v", a)
					}
				}
				got := host.GetCurrentRequestHeaders(id)
				if v, _ := header(got, wire.HeaderTask); v != tt.wantTask {
					t.Errorf("task = %q, want %q", v, tt.wantTask)
				}
				if v, _ := header(got, wire.HeaderModel); v != tt.wantModel {
					t.Errorf("model = %q, want %q", v, tt.wantModel)
				}
				if v, _ := header(got, wire.HeaderCost); v != tt.wantCost {
					t.Errorf("cost = %q, want %q", v, tt.wantCost)
				}
				if _, ok := header(got, wire.HeaderTarget); ok {
					t.Error("client's x-diffusion-target was kept")
				}
				if v, _ := header(got, wire.HeaderRequestID); len(v) != 32 {
					t.Errorf("x-request-id = %q, want a generated id", v)
				}
				if n, err := host.GetCounterMetric("diffusion_router.requests." + tt.wantTask); err != nil || n != before+1 {
					t.Errorf("requests counter for %s = %d (%v), want %d", tt.wantTask, n, err, before+1)
				}
			})
		}
	})
}

func TestKeepsClientRequestID(t *testing.T) {
	eachRunner(t, func(t *testing.T, host proxytest.HostEmulator) {
		id := host.InitializeHttpContext()
		host.CallOnRequestHeaders(id, [][2]string{{":method", "GET"}, {":path", "/health"}, {wire.HeaderRequestID, "trace-1"}}, true)
		if v, _ := header(host.GetCurrentRequestHeaders(id), wire.HeaderRequestID); v != "trace-1" {
			t.Fatalf("x-request-id = %q", v)
		}
	})
}

func TestParseErrorsAreCounted(t *testing.T) {
	eachRunner(t, func(t *testing.T, host proxytest.HostEmulator) {
		id := host.InitializeHttpContext()
		host.CallOnRequestHeaders(id, [][2]string{{":method", "POST"}, {":path", "/v1/images/generations"}, {"content-type", "application/json"}}, false)
		host.CallOnRequestBody(id, []byte(`{"size":"huge"}`), true)
		if n, _ := host.GetCounterMetric("diffusion_router.filter.parse_errors"); n != 1 {
			t.Fatalf("parse errors = %d", n)
		}
	})
}

// TestJobAffinity: a created job's id comes back wrapped with the worker;
// a poll with it is pinned to that worker with the original id restored; a
// forged id is answered 404 by the filter itself.
func TestJobAffinity(t *testing.T) {
	signer := jobid.NewSigner([]byte(testSecret))
	worker := "http://127.0.0.1:30001"
	key := jobid.WorkerKey(worker)
	eachRunner(t, func(t *testing.T, host proxytest.HostEmulator) {
		id := host.InitializeHttpContext()
		host.CallOnRequestHeaders(id, [][2]string{{":method", "POST"}, {":path", "/v1/videos"}, {"content-type", "multipart/form-data; boundary=b"}}, false)
		host.CallOnRequestBody(id, []byte("--b--"), true)
		host.CallOnResponseHeaders(id, [][2]string{{":status", "200"}, {"content-type", "application/json"}, {"content-length", "52"},
			{wire.HeaderWorker, worker}, {"x-envoy-upstream-service-time", "7"}}, false)
		if a := host.CallOnResponseBody(id, []byte(`{"id":"video_1","object":"video","status":"queued","progress":0}`), true); a != types.ActionContinue {
			t.Fatalf("response body action = %v", a)
		}
		var job map[string]any
		if err := json.Unmarshal(host.GetCurrentResponseBody(id), &job); err != nil {
			t.Fatal(err)
		}
		wrapped := job["id"].(string)
		if orig, k, ok := signer.Unwrap(wrapped); !ok || orig != "video_1" || k != key {
			t.Fatalf("created id %q does not carry the worker", wrapped)
		}
		if job["progress"] != 0.0 || job["status"] != "queued" {
			t.Fatalf("other fields changed: %v", job)
		}
		rh := host.GetCurrentResponseHeaders(id)
		if _, ok := header(rh, "content-length"); ok {
			t.Error("stale content-length kept on a rewritten body")
		}
		if v, _ := header(rh, wire.HeaderRouterMS); v == "" {
			t.Error("no x-diffusion-router-ms")
		}

		poll := host.InitializeHttpContext()
		host.CallOnRequestHeaders(poll, [][2]string{{":method", "GET"}, {":path", "/v1/videos/" + wrapped + "/content?x=1"}}, true)
		ph := host.GetCurrentRequestHeaders(poll)
		if v, _ := header(ph, ":path"); v != "/v1/videos/video_1/content?x=1" {
			t.Fatalf("poll path = %q", v)
		}
		if v, _ := header(ph, wire.HeaderTarget); v != key {
			t.Fatalf("poll target = %q, want %q", v, key)
		}

		forged := host.InitializeHttpContext()
		if a := host.CallOnRequestHeaders(forged, [][2]string{{":method", "GET"}, {":path", "/v1/videos/video_1." + key + ".AAAAAAAAAAAAAAAA"}}, true); a != types.ActionPause {
			t.Fatalf("forged id action = %v", a)
		}
		local := host.GetSentLocalResponse(forged)
		if local == nil || local.StatusCode != 404 || !strings.Contains(string(local.Data), "unknown job id") {
			t.Fatalf("forged id answer = %+v", local)
		}
	})
}

func TestImageURLsWrapped(t *testing.T) {
	signer := jobid.NewSigner([]byte(testSecret))
	body := []byte(`{"id":"img_1","created":1795833091,"data":[{"url":"/v1/images/img_1_0/content","revised_prompt":"p"},{"b64_json":"AAAA"}]}`)
	out, changed, err := WrapIDs(body, signer, jobid.WorkerKey("http://w:1"), noVersion)
	if err != nil || !changed {
		t.Fatalf("WrapIDs: %v %v", changed, err)
	}
	var doc struct {
		Created json.Number `json:"created"`
		Data    []struct {
			URL string `json:"url"`
		} `json:"data"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Created != "1795833091" {
		t.Fatalf("number rewritten: %s", doc.Created)
	}
	_, inner, _, ok := jobPath(doc.Data[0].URL)
	if !ok {
		t.Fatalf("url %q", doc.Data[0].URL)
	}
	if orig, _, ok := signer.Unwrap(inner); !ok || orig != "img_1_0" {
		t.Fatalf("url id %q not wrapped", inner)
	}
	again, changed, _ := WrapIDs(out, signer, jobid.WorkerKey("http://w:1"), noVersion)
	if changed || string(again) != string(out) {
		t.Fatal("wrapping is not idempotent")
	}
	if _, _, err := WrapIDs([]byte("[1]"), signer, "k", noVersion); err == nil {
		t.Fatal("non-object accepted")
	}
}

func TestImageVariantsKeepTheirQuery(t *testing.T) {
	signer := jobid.NewSigner([]byte(testSecret))
	key := jobid.WorkerKey("http://w:1")
	body := []byte(`{"id":"img_9","data":[{"url":"/v1/images/img_9/content?variant=0"},{"url":"/v1/images/img_9/content?variant=1"}]}`)
	out, changed, err := WrapIDs(body, signer, key, noVersion)
	if err != nil || !changed {
		t.Fatalf("WrapIDs: %v %v", changed, err)
	}
	var doc struct {
		Data []struct {
			URL string `json:"url"`
		} `json:"data"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	for i, d := range doc.Data {
		want := "?variant=" + strconv.Itoa(i)
		if !strings.HasSuffix(d.URL, "/content"+want) {
			t.Fatalf("url %d = %q, want it to end in /content%s", i, d.URL, want)
		}
		_, inner, _, ok := jobPath(d.URL)
		if orig, k, ok2 := signer.Unwrap(inner); !ok || !ok2 || orig != "img_9" || k != key {
			t.Fatalf("url %d = %q: id not wrapped for the worker", i, d.URL)
		}
	}
	if doc.Data[0].URL == doc.Data[1].URL {
		t.Fatal("both images got the same url")
	}
}

// An answer the plugin must not change is never held: b64 images carry no
// id a client comes back with, so they stream through as they arrive.
func TestBase64AnswersStreamUnheld(t *testing.T) {
	eachRunner(t, func(t *testing.T, host proxytest.HostEmulator) {
		for _, tt := range []struct {
			format   string
			wantHold bool
		}{{"b64_json", false}, {"url", true}, {"", true}} {
			id := host.InitializeHttpContext()
			host.CallOnRequestHeaders(id, [][2]string{{":method", "POST"}, {":path", "/v1/images/generations"}, {"content-type", "application/json"}}, false)
			req := `{"prompt":"p"}`
			if tt.format != "" {
				req = `{"prompt":"p","response_format":"` + tt.format + `"}`
			}
			host.CallOnRequestBody(id, []byte(req), true)
			host.CallOnResponseHeaders(id, [][2]string{{":status", "200"}, {"content-type", "application/json"}, {wire.HeaderWorker, "http://w:1"}}, false)
			a := host.CallOnResponseBody(id, []byte(`{"id":"img_1","data":[{"b64_json":"`), false)
			if held := a != types.ActionContinue; held != tt.wantHold {
				t.Fatalf("response_format %q: first chunk action %v, want held=%v", tt.format, a, tt.wantHold)
			}
		}
	})
}

func TestConfig(t *testing.T) {
	env := map[string]string{"GOOD": " 0123456789abcdef-from-env\n", "SHORT": "0123"}
	getenv := func(k string) string { return env[k] }
	for _, bad := range []string{`{"secret":"short"}`, `{"secret":"0123456789abcdef0","max_body_bytes":0}`, `{"secret":"0123456789abcdef0","nope":1}`, `{`,
		`{"secret_env":"SHORT"}`, `{"secret_env":"UNSET"}`, `{}`, `{"secret":"0123456789abcdef0","request_idle_ms":-1}`} {
		if _, err := ParseConfig([]byte(bad), getenv); err == nil {
			t.Errorf("ParseConfig(%s) accepted", bad)
		}
	}
	for cfg, want := range map[string]string{
		`{"secret_env":"GOOD"}`: "0123456789abcdef-from-env",
		`{"secret_env":"GOOD","secret":"0123456789abcdef-inline"}`: "0123456789abcdef-inline",
	} {
		c, err := ParseConfig([]byte(cfg), getenv)
		if err != nil || c.Secret != want {
			t.Errorf("ParseConfig(%s) = %q, %v; want secret %q", cfg, c.Secret, err, want)
		}
	}
	eachRunnerWithConfig(t, []byte(`{"secret":"short"}`), types.OnPluginStartStatusFailed)
	eachRunnerWithConfig(t, []byte(`{"secret_env":"DIFFUSION_TEST_UNSET_SECRET"}`), types.OnPluginStartStatusFailed)
	// The plugin reads the VM's environment (natively: the process's).
	t.Setenv("DIFFUSION_TEST_SECRET", testSecret)
	host, reset := proxytest.NewHostEmulator(proxytest.NewEmulatorOption().WithVMContext(newVM(t, "go")).WithPluginConfiguration([]byte(`{"secret_env":"DIFFUSION_TEST_SECRET"}`)))
	defer reset()
	if st := host.StartPlugin(); st != types.OnPluginStartStatusOK {
		t.Errorf("plugin start with the secret in its environment = %v", st)
	}
}

func eachRunnerWithConfig(t *testing.T, cfg []byte, want types.OnPluginStartStatus) {
	for _, runner := range []string{"go", "wasm"} {
		host, reset := proxytest.NewHostEmulator(proxytest.NewEmulatorOption().WithVMContext(newVM(t, runner)).WithPluginConfiguration(cfg))
		if st := host.StartPlugin(); st != want {
			t.Errorf("%s: plugin start with %s = %v, want %v", runner, cfg, st, want)
		}
		reset()
	}
}

func TestClassify(t *testing.T) {
	tests := []struct{ method, path, want string }{
		{"POST", "/v1/images/generations?x=1", "image"},
		{"POST", "/v1/images/edits", "image-edit"},
		{"POST", "/generate", "image"},
		{"POST", "/generate_video", "video"},
		{"GET", "/generate", "other"},
		{"GET", "/v1/images/generations", "other"},
		{"POST", "/v1/videos", "video"},
		{"GET", "/v1/videos/abc", "video-poll"},
		{"DELETE", "/v1/videos/abc", "video-poll"},
		{"POST", "/rollout/generate", "native"},
		{"GET", "/workers/http%3A%2F%2Fa%3A1", "control"},
		{"GET", "/health", "control"},
		{"GET", "/v1/images/abc/content", "other"},
	}
	for _, tt := range tests {
		if got := Classify(tt.method, tt.path); string(got) != tt.want {
			t.Errorf("Classify(%s %s) = %s, want %s", tt.method, tt.path, got, tt.want)
		}
	}
}

// BenchmarkGenerationRequest measures the plugin's work for one image
// generation (request headers, a small JSON body, response headers), run
// natively. `go test -bench . -benchmem ./filter/tagger` reports time and
// allocations per request.
// generationFixture is one image generation as the benchmarks send it:
// a small JSON body, its request headers and the answer's headers.
func generationFixture() (body []byte, req, resp [][2]string) {
	body = []byte(`{"prompt":"a fox","model":"flux","num_inference_steps":28,"size":"1024x1024","response_format":"b64_json"}`)
	req = [][2]string{{":method", "POST"}, {":path", "/v1/images/generations"}, {"content-type", "application/json"},
		{"content-length", strconv.Itoa(len(body))}, {"x-request-id", "r1"}}
	resp = [][2]string{{":status", "200"}, {"content-type", "application/json"}, {"x-envoy-upstream-service-time", "7000"}}
	return body, req, resp
}

func BenchmarkGenerationRequest(b *testing.B) {
	host, reset := proxytest.NewHostEmulator(proxytest.NewEmulatorOption().WithVMContext(NewVMContext()).WithPluginConfiguration(testConfig))
	defer reset()
	if st := host.StartPlugin(); st != types.OnPluginStartStatusOK {
		b.Fatalf("start = %v", st)
	}
	body, reqHeaders, respHeaders := generationFixture()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		id := host.InitializeHttpContext()
		host.CallOnRequestHeaders(id, reqHeaders, false)
		host.CallOnRequestBody(id, body, true)
		host.CallOnResponseHeaders(id, respHeaders, false)
		host.CompleteHttpContext(id)
	}
}

// Every path under a job prefix carries an id the router signed or is
// refused by the filter, whatever the method or the rest of the path.
func TestJobPathsNeedSignedIDs(t *testing.T) {
	signer := jobid.NewSigner([]byte(testSecret))
	key := jobid.WorkerKey("http://127.0.0.1:30001")
	signed := signer.Wrap("video_1", key)
	tests := []struct {
		method, path string
		wantPath     string // "" means refused with 404
	}{
		{"GET", "/v1/videos/raw", ""},
		{"GET", "/v1/videos/raw/content/", ""},
		{"GET", "/v1/videos/raw/x", ""},
		{"GET", "/v1/videos/", ""},
		{"POST", "/v1/videos/raw/remix", ""},
		{"GET", "/v1/images/raw", ""},
		{"GET", "/v1/images/raw/content?variant=1", ""},
		{"GET", "/v1/videos/" + signed, "/v1/videos/video_1"},
		{"POST", "/v1/videos/" + signed + "/remix", "/v1/videos/video_1/remix"},
		{"GET", "/v1/images/" + signed + "/content?variant=1", "/v1/images/video_1/content?variant=1"},
		// A list naming a job goes to that job's worker, with its own id.
		{"GET", "/v1/videos?video_id=raw", ""},
		{"GET", "/v1/videos?after=raw&limit=2", ""},
		{"GET", "/v1/videos?video_id=" + signed + "&limit=2", "/v1/videos?limit=2&video_id=video_1"},
		{"GET", "/v1/videos?after=" + signed, "/v1/videos?after=video_1"},
	}
	eachRunner(t, func(t *testing.T, host proxytest.HostEmulator) {
		for _, tt := range tests {
			id := host.InitializeHttpContext()
			a := host.CallOnRequestHeaders(id, [][2]string{{":method", tt.method}, {":path", tt.path}}, true)
			local := host.GetSentLocalResponse(id)
			if tt.wantPath == "" {
				if a != types.ActionPause || local == nil || local.StatusCode != 404 {
					t.Errorf("%s %s: action %v, local reply %+v; want refused with 404", tt.method, tt.path, a, local)
				}
				continue
			}
			h := host.GetCurrentRequestHeaders(id)
			if p, _ := header(h, ":path"); a != types.ActionContinue || local != nil || p != tt.wantPath {
				t.Errorf("%s %s: action %v, path %q; want it pinned as %q", tt.method, tt.path, a, p, tt.wantPath)
			}
			if k, _ := header(h, wire.HeaderTarget); tt.wantPath != "" && k != key {
				t.Errorf("%s %s: target %q, want %q", tt.method, tt.path, k, key)
			}
		}
		// A list that names no job is any video worker's, untouched.
		id := host.InitializeHttpContext()
		if a := host.CallOnRequestHeaders(id, [][2]string{{":method", "GET"}, {":path", "/v1/videos?limit=5"}}, true); a != types.ActionContinue {
			t.Fatalf("plain list: action %v", a)
		}
		h := host.GetCurrentRequestHeaders(id)
		if p, _ := header(h, ":path"); p != "/v1/videos?limit=5" {
			t.Fatalf("plain list path = %q", p)
		}
		if _, pinned := header(h, wire.HeaderTarget); pinned {
			t.Fatal("plain list pinned to a worker")
		}
	})
}

// A model name that would not be a safe header value is refused, never
// routed as if no model were named.
func TestModelWithControlCharactersRefused(t *testing.T) {
	eachRunner(t, func(t *testing.T, host proxytest.HostEmulator) {
		for _, tt := range []struct {
			model string
			want  int // 0: passes
		}{{"m\r\nx: y", 400}, {"m\x00", 400}, {strings.Repeat("m", 600), 400}, {"black-forest-labs/FLUX.1-dev", 0}} {
			id := host.InitializeHttpContext()
			host.CallOnRequestHeaders(id, [][2]string{{":method", "POST"}, {":path", "/v1/images/generations"}, {"content-type", "application/json"}}, false)
			body, _ := json.Marshal(map[string]any{"prompt": "p", "model": tt.model})
			host.CallOnRequestBody(id, body, true)
			local := host.GetSentLocalResponse(id)
			switch {
			case tt.want == 0 && local != nil:
				t.Errorf("model %q refused: %+v", tt.model, local)
			case tt.want != 0 && (local == nil || int(local.StatusCode) != tt.want):
				t.Errorf("model %q: local reply %+v, want %d", tt.model, local, tt.want)
			}
		}
	})
}

func noVersion(string) string { return "" }

// TestJobsKeepTheirWeightVersion: a created job's id carries the weight
// version its answer named; a poll, its content and a one-job list name
// that version in x-weight-version whatever the worker holds now, and a
// poll's answer keeps it in the id. Other jobs in a list carry none.
func TestJobsKeepTheirWeightVersion(t *testing.T) {
	signer := jobid.NewSigner([]byte(testSecret))
	worker := "http://127.0.0.1:30001"
	key := jobid.WorkerKey(worker)
	eachRunner(t, func(t *testing.T, host proxytest.HostEmulator) {
		create := host.InitializeHttpContext()
		host.CallOnRequestHeaders(create, [][2]string{{":method", "POST"}, {":path", "/v1/videos"}, {"content-type", "multipart/form-data; boundary=b"}}, false)
		host.CallOnRequestBody(create, []byte("--b--"), true)
		host.CallOnResponseHeaders(create, [][2]string{{":status", "200"}, {"content-type", "application/json"},
			{wire.HeaderWorker, worker}, {wire.HeaderWeightVersion, "v0"}}, false)
		host.CallOnResponseBody(create, []byte(`{"id":"video_1","object":"video","status":"queued"}`), true)
		var job map[string]any
		if err := json.Unmarshal(host.GetCurrentResponseBody(create), &job); err != nil {
			t.Fatal(err)
		}
		wrapped := job["id"].(string)
		if ref, ok := signer.UnwrapRef(wrapped); !ok || ref != (jobid.Ref{ID: "video_1", Worker: key, Version: "v0"}) {
			t.Fatalf("created id %q carries %+v", wrapped, ref)
		}
		for _, path := range []string{"/v1/videos/" + wrapped, "/v1/videos/" + wrapped + "/content", "/v1/videos?video_id=" + wrapped} {
			c := host.InitializeHttpContext()
			host.CallOnRequestHeaders(c, [][2]string{{":method", "GET"}, {":path", path}}, true)
			// The worker moved on to v1 meanwhile: Envoy labels the answer so.
			host.CallOnResponseHeaders(c, [][2]string{{":status", "200"}, {"content-type", "application/json"},
				{wire.HeaderWorker, worker}, {wire.HeaderWeightVersion, "v1"}}, false)
			if v, _ := header(host.GetCurrentResponseHeaders(c), wire.HeaderWeightVersion); v != "v0" {
				t.Errorf("GET %s: x-weight-version = %q, want v0 (the job's)", path, v)
			}
			if strings.Contains(path, "content") {
				continue
			}
			host.CallOnResponseBody(c, []byte(`{"object":"list","data":[{"id":"video_1","status":"completed"},{"id":"video_2","status":"completed"}],"id":"video_1"}`), true)
			var doc struct {
				ID   string `json:"id"`
				Data []struct {
					ID string `json:"id"`
				} `json:"data"`
			}
			if err := json.Unmarshal(host.GetCurrentResponseBody(c), &doc); err != nil {
				t.Fatal(err)
			}
			if ref, _ := signer.UnwrapRef(doc.ID); ref.Version != "v0" {
				t.Errorf("GET %s: the job's id in the answer carries version %q", path, ref.Version)
			}
			if ref, _ := signer.UnwrapRef(doc.Data[1].ID); ref.ID != "video_2" || ref.Version != "" {
				t.Errorf("GET %s: another job's id carries %+v, want no version", path, ref)
			}
		}
		// An id issued before versions were signed in keeps Envoy's label.
		old := host.InitializeHttpContext()
		host.CallOnRequestHeaders(old, [][2]string{{":method", "GET"}, {":path", "/v1/videos/" + signer.Wrap("video_1", key)}}, true)
		host.CallOnResponseHeaders(old, [][2]string{{":status", "200"}, {"content-type", "text/plain"}, {wire.HeaderWeightVersion, "v1"}}, false)
		if v, _ := header(host.GetCurrentResponseHeaders(old), wire.HeaderWeightVersion); v != "v1" {
			t.Errorf("versionless id: x-weight-version = %q, want Envoy's v1", v)
		}
	})
}

// TestJobBook: a video create's answer is held until the job book has its
// signed id; a job list is signed with the versions the book knows, so it
// hands out the ids the creates did; a book that fails costs the list its
// versions, never the answer.
func TestJobBook(t *testing.T) {
	cfg := []byte(`{"secret":"` + testSecret + `","max_body_bytes":1024,"defaults":{"steps":50,"width":1024,"height":1024,"video_frames":16},"jobs_cluster":"registry"}`)
	signer := jobid.NewSigner([]byte(testSecret))
	worker := "http://127.0.0.1:30001"
	key := jobid.WorkerKey(worker)
	eachRunnerConfigured(t, cfg, func(t *testing.T, host proxytest.HostEmulator) {
		create := host.InitializeHttpContext()
		host.CallOnRequestHeaders(create, [][2]string{{":method", "POST"}, {":path", "/v1/videos"}, {"content-type", "multipart/form-data; boundary=b"}}, false)
		host.CallOnRequestBody(create, []byte("--b--"), true)
		host.CallOnResponseHeaders(create, [][2]string{{":status", "200"}, {"content-type", "application/json"},
			{wire.HeaderWorker, worker}, {wire.HeaderWeightVersion, "v0"}}, false)
		if a := host.CallOnResponseBody(create, []byte(`{"id":"video_1","object":"video","status":"queued"}`), true); a != types.ActionPause {
			t.Fatalf("create answer not held for the book: %v", a)
		}
		calls := host.GetCalloutAttributesFromContext(create)
		if len(calls) != 1 || calls[0].Upstream != "registry" {
			t.Fatalf("callouts = %+v", calls)
		}
		if p, _ := header(calls[0].Headers, ":path"); p != wire.PathJobRecord {
			t.Fatalf("record sent to %q", p)
		}
		var rec wire.JobRecord
		if err := json.Unmarshal(calls[0].Body, &rec); err != nil || len(rec.IDs) != 1 {
			t.Fatalf("record %s: %v", calls[0].Body, err)
		}
		created := rec.IDs[0]
		if ref, ok := signer.UnwrapRef(created); !ok || ref != (jobid.Ref{ID: "video_1", Worker: key, Version: "v0"}) {
			t.Fatalf("recorded %q = %+v", created, ref)
		}
		host.CallOnHttpCallResponse(calls[0].CalloutID, [][2]string{{":status", "200"}}, nil, []byte(`{"recorded":1}`))
		if a := host.GetCurrentHttpStreamAction(create); a != types.ActionContinue {
			t.Fatalf("create answer not passed on after the book answered: %v", a)
		}
		var job map[string]any
		if err := json.Unmarshal(host.GetCurrentResponseBody(create), &job); err != nil || job["id"] != created {
			t.Fatalf("client got %v (%v), want id %s", job, err, created)
		}

		list := func(status string, answer string) (ids []string, errs uint64) {
			c := host.InitializeHttpContext()
			host.CallOnRequestHeaders(c, [][2]string{{":method", "GET"}, {":path", "/v1/videos"}}, true)
			host.CallOnResponseHeaders(c, [][2]string{{":status", "200"}, {"content-type", "application/json"},
				{wire.HeaderWorker, worker}, {wire.HeaderWeightVersion, "v1"}}, false)
			if a := host.CallOnResponseBody(c, []byte(`{"object":"list","data":[{"id":"video_1","object":"video"},{"id":"video_2","object":"video"}]}`), true); a != types.ActionPause {
				t.Fatalf("list not held for the book: %v", a)
			}
			calls := host.GetCalloutAttributesFromContext(c)
			var q wire.JobVersionsQuery
			if len(calls) != 1 || json.Unmarshal(calls[0].Body, &q) != nil || q.Worker != key || len(q.IDs) != 2 {
				t.Fatalf("lookup = %+v", calls)
			}
			host.CallOnHttpCallResponse(calls[0].CalloutID, [][2]string{{":status", status}}, nil, []byte(answer))
			var doc struct {
				Data []struct {
					ID string `json:"id"`
				} `json:"data"`
			}
			if err := json.Unmarshal(host.GetCurrentResponseBody(c), &doc); err != nil || len(doc.Data) != 2 {
				t.Fatalf("list answer %s: %v", host.GetCurrentResponseBody(c), err)
			}
			n, _ := host.GetCounterMetric("diffusion_router.filter.job_book_errors")
			return []string{doc.Data[0].ID, doc.Data[1].ID}, n
		}
		ids, errs := list("200", `{"versions":{"video_1":"v0"}}`)
		if ids[0] != created || errs != 0 {
			t.Fatalf("listed %q, want the create's %q (%d book errors)", ids[0], created, errs)
		}
		if ref, _ := signer.UnwrapRef(ids[1]); ref.ID != "video_2" || ref.Version != "" {
			t.Fatalf("a job the book does not know listed as %+v", ref)
		}
		ids, errs = list("503", `{"error":"down"}`)
		if ref, ok := signer.UnwrapRef(ids[0]); !ok || ref.ID != "video_1" || ref.Version != "" || errs != 1 {
			t.Fatalf("with the book down: listed %+v (%d book errors)", ref, errs)
		}
	})
}
