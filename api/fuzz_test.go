package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/fleet"
	"github.com/diffrouter/diffusion-router/registry"
)

// fuzzAPI is an API whose fleet never leaves the machine: hostnames do not
// resolve and probes give up fast.
func fuzzAPI(t testing.TB) (*Server, *registry.Registry) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	reg := registry.New(nil)
	fl := fleet.NewManager(context.Background(), reg, noEnvoys{}, fleet.Config{
		ProbeTimeout: 20 * time.Millisecond,
		Resolve:      func(context.Context, string) ([]netip.Addr, error) { return nil, errors.New("no DNS in fuzzing") },
	}, log.WithField("fuzz", true))
	return &Server{Fleet: fl, Log: log.WithField("fuzz", true), FanoutTimeout: 50 * time.Millisecond}, reg
}

// request builds what the server would see, for any path a fuzzer makes up
// (httptest.NewRequest panics on some).
func request(method, path, rawQuery, body string) *http.Request {
	r := &http.Request{Method: method, URL: &url.URL{Path: path, RawQuery: rawQuery}, Header: http.Header{},
		Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body)), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
	r.Header.Set("Content-Type", "application/json")
	return r.WithContext(context.Background())
}

// checkAnswer holds for every answer: never a 500 (a panic or an unhandled
// error), always a JSON object, an error message with every 4xx, and a 4xx
// changes nothing.
func checkAnswer(t *testing.T, rec *httptest.ResponseRecorder, genBefore, genAfter uint64) {
	t.Helper()
	if rec.Code >= 500 && rec.Code != http.StatusBadGateway && rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var v map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("status %d, body is not a JSON object: %q", rec.Code, rec.Body)
	}
	if rec.Code >= 400 && rec.Code < 500 {
		if msg, ok := v["error"].(string); !ok || msg == "" {
			t.Fatalf("status %d without an error message: %s", rec.Code, rec.Body)
		}
		if genAfter != genBefore {
			t.Fatalf("status %d changed the registry (generation %d -> %d)", rec.Code, genBefore, genAfter)
		}
	}
}

func FuzzAddWorker(f *testing.F) {
	for _, seed := range []struct{ query, body string }{
		{"", `{"url":"http://127.0.0.1:1"}`},
		{"url=http%3A%2F%2F169.254.169.254", ""},
		{"", `{"url": 5}`},
		{"", `{"worker_url":"ftp://x:1"}`},
		{"", `[1,2]`},
		{"url=", `{"url":"http://[::1]:99999"}`},
		{"", `{"url":"http://user:pw@10.0.0.1:80/path?q#f"}`},
		{"", "{\"url\":\"http://\u0000:1\"}"},
	} {
		f.Add(seed.query, seed.body)
	}
	s, reg := fuzzAPI(f)
	f.Fuzz(func(t *testing.T, query, body string) {
		before := reg.Snapshot().Generation
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, request("POST", "/add_worker", query, body))
		checkAnswer(t, rec, before, reg.Snapshot().Generation)
	})
}

func FuzzWorkerByID(f *testing.F) {
	for _, seed := range []struct {
		method, id, body string
	}{
		{"GET", "http%3A%2F%2F127.0.0.1%3A1", ""},
		{"PUT", "http%3A%2F%2F127.0.0.1%3A1", `{"is_dead": true}`},
		{"PUT", "not-a-url", `{"is_dead": "no"}`},
		{"DELETE", "%2525", ""},
		{"PATCH", "x", "{}"},
	} {
		f.Add(seed.method, seed.id, seed.body)
	}
	s, reg := fuzzAPI(f)
	u, _ := registry.ParseWorkerURL("http://127.0.0.1:1")
	_, _ = reg.Add(u, "127.0.0.1", registry.Capabilities{}, registry.StateActive, "")
	f.Fuzz(func(t *testing.T, method, id, body string) {
		switch method {
		case "GET", "PUT", "DELETE", "POST", "PATCH":
		default:
			return // not a method a client can send
		}
		// The id as it arrives: Go's server has decoded the path once and
		// kept the raw form, which is what the handler reads.
		decoded, err := url.PathUnescape(id)
		if err != nil {
			return // the server would have refused the request line
		}
		req := request(method, "/workers/"+decoded, "", body)
		req.URL.RawPath = "/workers/" + id
		before := reg.Snapshot().Generation
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		checkAnswer(t, rec, before, reg.Snapshot().Generation)
	})
}

func FuzzFleetCalls(f *testing.F) {
	for _, seed := range []struct{ path, body string }{
		{"/update_weights_from_disk", `{"model_path":"/ckpt","mode":"drain","max_unavailable":2,"weight_version":"v1"}`},
		{"/update_weights_from_disk", `{"model_path":7}`},
		{"/update_weights_from_disk", `{"model_path":"/x","max_unavailable":1e400}`},
		{"/release_memory_occupation", `{}`},
		{"/v1/set_lora", `{"lora_nickname":null}`},
		{"/get_weights_checksum", `"x"`},
	} {
		f.Add(seed.path, seed.body)
	}
	s, reg := fuzzAPI(f)
	f.Fuzz(func(t *testing.T, path, body string) {
		if !strings.HasPrefix(path, "/") {
			return
		}
		before := reg.Snapshot().Generation
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, request("POST", path, "", body))
		checkAnswer(t, rec, before, reg.Snapshot().Generation)
	})
}
