package api

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/diffrouter/diffusion-router/jobbook"
	"github.com/diffrouter/diffusion-router/jobid"
	"github.com/diffrouter/diffusion-router/wire"
)

// TestJobBookEndpoints: only ids this router signed with a version are
// recorded (a batch with one bad id records nothing); versions are
// answered by the worker's own ids; bad input is a JSON 4xx.
func TestJobBookEndpoints(t *testing.T) {
	s, _ := newAPI(t)
	post := func(path, contentType, body string) (int, map[string]any) {
		req := httptest.NewRequest("POST", path, strings.NewReader(body))
		req.Header.Set("Content-Type", contentType)
		return serve(t, s, req)
	}
	if code, v := post(wire.PathJobRecord, "application/json", `{"ids":["x"]}`); code != 404 || v["error"] == nil {
		t.Fatalf("record without a book = %d %v", code, v)
	}
	s.Jobs, s.SyncSecret = jobbook.New(16), []byte(syncSecret)
	signer := jobid.NewSigner([]byte(syncSecret))
	key := jobid.WorkerKey("http://127.0.0.1:1")
	good := signer.WrapRef(jobid.Ref{ID: "video_1", Worker: key, Version: "v0"})
	other := signer.WrapRef(jobid.Ref{ID: "video_2", Worker: key, Version: "v1"})
	for name, tc := range map[string]struct {
		ct, body string
		code     int
	}{
		"text/plain":         {"text/plain", `{"ids":["` + good + `"]}`, 415},
		"not JSON":           {"application/json", `{"ids":`, 400},
		"unknown field":      {"application/json", `{"ids":["` + good + `"],"x":1}`, 400},
		"no ids":             {"application/json", `{"ids":[]}`, 400},
		"forged id":          {"application/json", `{"ids":["` + good + `","video_9.` + key + `-djE.AAAAAAAAAAAAAAAA"]}`, 400},
		"id without version": {"application/json", `{"ids":["` + signer.Wrap("video_3", key) + `"]}`, 400},
		"another secret":     {"application/json", `{"ids":["` + jobid.NewSigner([]byte("another secret, 16+")).WrapRef(jobid.Ref{ID: "video_4", Worker: key, Version: "v0"}) + `"]}`, 400},
		"too many":           {"application/json", `{"ids":[` + strings.TrimSuffix(strings.Repeat(`"`+good+`",`, wire.MaxJobsPerCall+1), ",") + `]}`, 400},
	} {
		if code, v := post(wire.PathJobRecord, tc.ct, tc.body); code != tc.code || v["error"] == nil {
			t.Errorf("%s: record = %d %v, want %d", name, code, v, tc.code)
		}
	}
	if s.Jobs.Len() != 0 {
		t.Fatalf("refused records changed the book: %d jobs", s.Jobs.Len())
	}
	if code, v := post(wire.PathJobRecord, "application/json", `{"ids":["`+good+`","`+other+`"]}`); code != 200 || v["recorded"] != 2.0 {
		t.Fatalf("record = %d %v", code, v)
	}
	code, v := post(wire.PathJobVersions, "application/json", `{"worker":"`+key+`","ids":["video_1","video_2","video_3"]}`)
	if vs, _ := v["versions"].(map[string]any); code != 200 || len(vs) != 2 || vs["video_1"] != "v0" || vs["video_2"] != "v1" {
		t.Fatalf("versions = %d %v", code, v)
	}
	for _, bad := range []string{`{"worker":"short","ids":[]}`, `{"worker":"` + key + `","ids":"video_1"}`, `[]`} {
		if code, v := post(wire.PathJobVersions, "application/json", bad); code != 400 || v["error"] == nil {
			t.Errorf("versions %s = %d %v", bad, code, v)
		}
	}
	if code, _ := call(t, s, "GET", wire.PathJobVersions, ""); code != 405 {
		t.Fatalf("GET versions = %d", code)
	}
}
