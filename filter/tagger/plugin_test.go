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
