package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/envoyadmin"
	"github.com/diffrouter/diffusion-router/fleet"
	"github.com/diffrouter/diffusion-router/harness/fakeworker"
	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/wire"
)

// noEnvoys is the xDS side with nobody connected: changes apply at once.
type noEnvoys struct{}

func (noEnvoys) WaitSynced(context.Context, uint64) (int, error) { return 0, nil }
func (noEnvoys) Nodes() []envoyadmin.Node                        { return nil }

func newAPI(t *testing.T) (*Server, *registry.Registry) {
	t.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	reg := registry.New(nil)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	fl := fleet.NewManager(ctx, reg, noEnvoys{}, fleet.Config{ProbeTimeout: 2 * time.Second}, log.WithField("t", t.Name()))
	return &Server{Fleet: fl, Log: log.WithField("t", t.Name()), FanoutTimeout: 5 * time.Second}, reg
}

// testWorker is a fake worker running in-process.
type testWorker struct {
	URL   string
	Close func()
}

// worker runs a fake worker in-process; faults may be set through its API.
func worker(t *testing.T, taskType string) testWorker {
	t.Helper()
	cfg := fakeworker.DefaultConfig()
	cfg.TaskType, cfg.TimeScale, cfg.WorkerID = taskType, 0.0001, "w"
	url, stop, err := fakeworker.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return testWorker{URL: url, Close: stop}
}

func call(t *testing.T, h http.Handler, method, target, body string) (int, map[string]any) {
	t.Helper()
	return serve(t, h, httptest.NewRequest(method, target, strings.NewReader(body)))
}

// serve has h answer req and decodes the JSON object it answers.
func serve(t *testing.T, h http.Handler, req *http.Request) (int, map[string]any) {
	t.Helper()
	method, target := req.Method, req.URL.String()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var v map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("%s %s: answer is not a JSON object: %q", method, target, rec.Body.String())
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s: content type %q", method, target, ct)
	}
	return rec.Code, v
}

func TestAddListRemove(t *testing.T) {
	s, reg := newAPI(t)
	w := worker(t, "T2I")
	code, v := call(t, s, "POST", "/add_worker?url="+url.QueryEscape(w.URL+"/"), "")
	if code != 200 || v["added"] != true {
		t.Fatalf("add = %d %v", code, v)
	}
	code, v = call(t, s, "POST", "/workers", `{"worker_url": "`+w.URL+`"}`)
	if code != 200 || v["added"] != false {
		t.Fatalf("second add = %d %v, want 200 and added=false", code, v)
	}
	_, v = call(t, s, "GET", "/list_workers", "")
	if urls := v["urls"].([]any); len(urls) != 1 || urls[0] != w.URL {
		t.Fatalf("urls = %v", urls)
	}
	code, v = call(t, s, "GET", "/health", "")
	if code != 200 || v["healthy_workers"] != 1.0 {
		t.Fatalf("health = %d %v", code, v)
	}
	// Envoy does not know... nothing is in flight with no Envoy, so remove
	// drains at once.
	code, v = call(t, s, "POST", "/remove_worker", `{"url": "`+w.URL+`"}`)
	if code != 200 {
		t.Fatalf("remove = %d %v", code, v)
	}
	s.Fleet.Wait()
	if n := len(reg.Snapshot().Workers); n != 0 {
		t.Fatalf("%d workers after drain, want 0", n)
	}
	code, _ = call(t, s, "GET", "/health", "")
	if code != 503 {
		t.Fatalf("health with no workers = %d, want 503", code)
	}
}

func TestPutWorker(t *testing.T) {
	s, reg := newAPI(t)
	w := worker(t, "T2V")
	if code, v := call(t, s, "POST", "/add_worker", `{"url":"`+w.URL+`"}`); code != 200 {
		t.Fatalf("add = %d %v", code, v)
	}
	id := "/workers/" + registry.EncodeID(w.URL)
	tests := []struct {
		body      string
		wantCode  int
		wantState registry.State
	}{
		{`{"is_dead": "yes"}`, 400, registry.StateActive},
		{`{"dead": true}`, 400, registry.StateActive},
		{`{}`, 400, registry.StateActive},
		{`nope`, 400, registry.StateActive},
		{`{"is_dead": true}`, 200, registry.StateQuarantined},
		{`{"is_dead": false}`, 200, registry.StateActive},
	}
	for _, tt := range tests {
		code, v := call(t, s, "PUT", id, tt.body)
		if code != tt.wantCode {
			t.Fatalf("PUT %s = %d %v, want %d", tt.body, code, v, tt.wantCode)
		}
		if got := reg.Snapshot().Workers[0].State; got != tt.wantState {
			t.Fatalf("after PUT %s state = %s, want %s", tt.body, got, tt.wantState)
		}
	}
	// A worker being removed stays removed: marking it dead is a 409.
	if _, _, _, err := reg.Move(reg.Snapshot().Workers[0].Key(), registry.StateDraining, "removed by operator"); err != nil {
		t.Fatal(err)
	}
	if code, v := call(t, s, "PUT", id, `{"is_dead": true}`); code != 409 || reg.Snapshot().Workers[0].State != registry.StateDraining {
		t.Fatalf("is_dead on a draining worker = %d %v, state %s", code, v, reg.Snapshot().Workers[0].State)
	}
	if _, _, _, err := reg.Move(reg.Snapshot().Workers[0].Key(), registry.StateActive, ""); err != nil {
		t.Fatal(err)
	}
	// Re-admission checks /health first: a dead worker stays out with 409.
	call(t, s, "PUT", id, `{"is_dead": true}`)
	w.Close()
	code, v := call(t, s, "PUT", id, `{"is_dead": false}`)
	if code != 409 || !strings.Contains(v["error"].(string), "quarantined") {
		t.Fatalf("re-admit of a dead worker = %d %v, want 409 naming the quarantine", code, v)
	}
	if got := reg.Snapshot().Workers[0].State; got != registry.StateQuarantined {
		t.Fatalf("state = %s after failed re-admission", got)
	}
}

func TestFanout(t *testing.T) {
	s, _ := newAPI(t)
	code, v := call(t, s, "POST", "/update_weights_from_disk", `{"model_path":"/w/v2"}`)
	if code != 503 || !strings.Contains(v["error"].(string), "No healthy workers") {
		t.Fatalf("no workers = %d %v", code, v)
	}
	good, bad := worker(t, "T2I"), worker(t, "T2I")
	for _, w := range []testWorker{good, bad} {
		call(t, s, "POST", "/add_worker", `{"url":"`+w.URL+`"}`)
	}
	if code, v := call(t, s, "POST", "/update_weights_from_disk", `{"flush_cache": true}`); code != 400 {
		t.Fatalf("missing model_path = %d %v", code, v)
	}
	code, v = call(t, s, "POST", "/update_weights_from_disk", `{"model_path":"/w/v2"}`)
	if code != 200 || len(v["results"].([]any)) != 2 || v["failed"] != 0.0 {
		t.Fatalf("all succeed = %d %v", code, v)
	}
	resp, err := http.Post(bad.URL+"/_fake/faults", "application/json", strings.NewReader(`{"update_fail": true}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("set fault: %v %v", err, resp)
	}
	resp.Body.Close()
	code, v = call(t, s, "POST", "/update_weights_from_disk", `{"model_path":"/w/v3"}`)
	if code != 502 || v["failed"] != 1.0 || v["succeeded"] != 1.0 {
		t.Fatalf("partial failure = %d %v, want 502 with one failure", code, v)
	}
	for _, r := range v["results"].([]any) {
		res := r.(map[string]any)
		if res["worker_url"] == bad.URL && res["status_code"] != 400.0 {
			t.Fatalf("failed worker result = %v", res)
		}
	}
}

func TestBadRequests(t *testing.T) {
	s, reg := newAPI(t)
	tests := []struct {
		method, target, body string
		want                 int
	}{
		{"POST", "/add_worker", "", 400},
		{"POST", "/add_worker", `{"url": null}`, 400},
		{"POST", "/add_worker", `{"url": "http://a:1"} {"x": 1}`, 400},
		{"POST", "/add_worker", `{"url": "gopher://a:1"}`, 400},
		{"POST", "/add_worker", `{"url": "http://[fe80::1]:1"}`, 400},
		{"POST", "/add_worker", `{"url": "http://no-such-host.invalid:1"}`, 400},
		{"DELETE", "/add_worker", "", 405},
		{"PATCH", "/workers", "", 405},
		{"GET", "/nowhere", "", 404},
		{"GET", "/workers/" + registry.EncodeID("http://10.0.0.1:1"), "", 404},
		{"POST", "/add_worker", `{"url":"` + strings.Repeat("x", MaxBodyBytes) + `"}`, 413},
		{"POST", "/add_worker", "{\"url\": \"http://a:1/\xc3\x28\"}", 400},
		{"POST", "/update_weights_from_disk", "{\"model_path\": \"/m/\xc3\x28\"}", 400},
		// Values that reach a header (x-weight-version) or Envoy metadata.
		{"POST", "/update_weights_from_disk", `{"model_path": "m1", "weight_version": "v\r\nSet-Cookie: session=attacker\r\nContent-Length: 5\r\n\r\nHIJACK"}`, 400},
		{"POST", "/update_weights_from_disk", `{"model_path": "m1", "weight_version": "v 1"}`, 400},
		{"POST", "/update_weights_from_disk", `{"model_path": "m1", "weight_version": "v\u00e9"}`, 400},
		{"POST", "/update_weights_from_disk", `{"model_path": "m\nx"}`, 400},
	}
	for _, tt := range tests {
		code, v := call(t, s, tt.method, tt.target, tt.body)
		if code != tt.want {
			t.Errorf("%s %s %.40q = %d %v, want %d", tt.method, tt.target, tt.body, code, v, tt.want)
		}
		if _, ok := v["error"].(string); !ok {
			t.Errorf("%s %s: no error message: %v", tt.method, tt.target, v)
		}
	}
	if g := reg.Snapshot().Generation; g != 0 {
		t.Fatalf("bad requests changed the registry (generation %d)", g)
	}
}

func TestChecksumMismatch(t *testing.T) {
	s, reg := newAPI(t)
	s.QuarantineChecksumMismatch = true
	var ws []testWorker
	for range 3 {
		w := worker(t, "T2I")
		ws = append(ws, w)
		call(t, s, "POST", "/add_worker", `{"url":"`+w.URL+`"}`)
	}
	// One worker loads other weights behind the router's back.
	resp, err := http.Post(ws[1].URL+"/update_weights_from_disk", "application/json", strings.NewReader(`{"model_path":"/rogue"}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("direct update: %v %v", err, resp)
	}
	resp.Body.Close()
	code, v := call(t, s, "POST", "/get_weights_checksum", "")
	if code != 200 || v["consistent"] != false {
		t.Fatalf("checksum = %d %v", code, v)
	}
	if m := v["mismatched"].([]any); len(m) != 1 || m[0] != ws[1].URL {
		t.Fatalf("mismatched = %v, want [%s]", m, ws[1].URL)
	}
	w, _ := reg.Get(ws[1].URL)
	if w.State != registry.StateQuarantined || !strings.Contains(w.Reason, "checksum") {
		t.Fatalf("rogue worker = %s (%s)", w.State, w.Reason)
	}
	// LoRA calls fan out with the same result shape.
	code, v = call(t, s, "POST", "/v1/set_lora", `{"lora_nickname":"style","lora_path":"/lora/style"}`)
	if code != 200 || v["succeeded"] != 2.0 {
		t.Fatalf("set_lora = %d %v", code, v)
	}
	// A request every worker refuses alike is the caller's fault: 400, and
	// nobody is quarantined.
	code, v = call(t, s, "POST", "/v1/set_lora", `{}`)
	if code != 400 || v["rejected"] != true || len(v["quarantined"].([]any)) != 0 {
		t.Fatalf("bad set_lora = %d %v, want 400, rejected, nobody quarantined", code, v)
	}
	for _, w := range []testWorker{ws[0], ws[2]} {
		if wk, _ := reg.Get(w.URL); wk.State != registry.StateActive {
			t.Fatalf("%s is %s after a rejected call", w.URL, wk.State)
		}
	}
}

func TestUpdateRejectedByEveryWorkerChangesNothing(t *testing.T) {
	s, reg := newAPI(t)
	var ws []testWorker
	for range 3 {
		w := worker(t, "T2I")
		ws = append(ws, w)
		call(t, s, "POST", "/add_worker", `{"url":"`+w.URL+`"}`)
		resp, err := http.Post(w.URL+"/_fake/faults", "application/json", strings.NewReader(`{"update_fail": true}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	for _, mode := range []string{"inplace", "drain"} {
		code, v := call(t, s, "POST", "/update_weights_from_disk", `{"model_path":"/typo","mode":"`+mode+`","max_unavailable":2}`)
		if code != 400 || v["rejected"] != true {
			t.Fatalf("%s: every worker failing alike = %d %v, want 400 rejected", mode, code, v)
		}
		snap := reg.Snapshot()
		if snap.Fleet.Version != "" {
			t.Fatalf("%s: fleet version moved to %q", mode, snap.Fleet.Version)
		}
		for _, w := range snap.Workers {
			if w.State != registry.StateActive || w.WeightVersion != registry.InitialWeightVersion {
				t.Fatalf("%s: %s is %s at version %s", mode, w.Key(), w.State, w.WeightVersion)
			}
		}
	}
}

func TestUpdateTimeoutQuarantines(t *testing.T) {
	s, reg := newAPI(t)
	s.FanoutTimeout = 200 * time.Millisecond
	good, slow := worker(t, "T2I"), worker(t, "T2I")
	for _, w := range []testWorker{good, slow} {
		call(t, s, "POST", "/add_worker", `{"url":"`+w.URL+`"}`)
	}
	resp, err := http.Post(slow.URL+"/_fake/faults", "application/json", strings.NewReader(`{"update_hang": true}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	code, v := call(t, s, "POST", "/update_weights_from_disk", `{"model_path":"/ckpt/2","weight_version":2}`)
	if code != 502 || v["weight_version"] != "2" {
		t.Fatalf("update with a hung worker = %d %v", code, v)
	}
	if w, _ := reg.Get(slow.URL); w.State != registry.StateQuarantined || !strings.Contains(w.Reason, "weight update") {
		t.Fatalf("hung worker = %s (%s)", w.State, w.Reason)
	}
	if w, _ := reg.Get(good.URL); w.State != registry.StateActive || w.WeightVersion != "2" {
		t.Fatalf("good worker = %s at %s", w.State, w.WeightVersion)
	}
	// Bad router fields are refused before anything is sent.
	for _, body := range []string{`{"model_path":"/x","mode":"fast"}`, `{"model_path":"/x","max_unavailable":0}`,
		`{"model_path":"/x","weight_version":{}}`, `{"model_path":"/x","weight_version":""}`, `{"model_path":7}`} {
		if code, v := call(t, s, "POST", "/update_weights_from_disk", body); code != 400 {
			t.Fatalf("%s = %d %v, want 400", body, code, v)
		}
	}
	if reg.Snapshot().Fleet.Version != "2" {
		t.Fatal("refused update changed the fleet version")
	}
}

func TestAdminToken(t *testing.T) {
	s, reg := newAPI(t)
	s.AdminToken = "s3cret-token"
	w := worker(t, "T2I")
	body := `{"url":"` + w.URL + `"}`
	tests := []struct {
		auth string
		want int
	}{
		{"", 401},
		{"Bearer wrong", 401},
		{"Basic s3cret-token", 401},
		{"Bearer S3CRET-TOKEN", 401},
		{"Bearer s3cret-token", 200},
		{"bearer s3cret-token", 200},
		{"BEARER  s3cret-token", 200},
	}
	for _, tt := range tests {
		req := httptest.NewRequest("POST", "/add_worker", strings.NewReader(body))
		if tt.auth != "" {
			req.Header.Set("Authorization", tt.auth)
		}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		if rec.Code != tt.want {
			t.Fatalf("auth %q = %d %s, want %d", tt.auth, rec.Code, rec.Body, tt.want)
		}
		if strings.Contains(rec.Body.String(), "s3cret-token") {
			t.Fatal("the answer echoes the token")
		}
		if tt.want == 401 && len(reg.Snapshot().Workers) != 0 {
			t.Fatal("an unauthorized call changed the registry")
		}
	}
	// Reads stay open.
	if code, _ := call(t, s, "GET", "/list_workers", ""); code != 200 {
		t.Fatalf("GET without token = %d", code)
	}
}

// The API answers exactly the paths Envoy sends it (wire.RegistryPaths).
func TestAnswersEveryRegistryPath(t *testing.T) {
	s := &Server{}
	served := map[string]bool{}
	for p := range s.registryEndpoints() {
		served[p] = true
	}
	for _, p := range wire.FleetCallPaths {
		served[p] = true
	}
	for _, p := range wire.RegistryPaths {
		if !served[p] {
			t.Errorf("Envoy sends %s to the registry, which has no endpoint for it", p)
		}
		delete(served, p)
	}
	for p := range served {
		t.Errorf("the registry serves %s, but Envoy never sends it there", p)
	}
}
