package tagger

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/diffrouter/diffusion-router/jobid"
	"github.com/diffrouter/diffusion-router/wire"
)

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
