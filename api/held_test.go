package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/heldjobs"
	"github.com/diffrouter/diffusion-router/jobid"
	"github.com/diffrouter/diffusion-router/queue"
	"github.com/diffrouter/diffusion-router/wire"
)

// heldCall is a call the filter sends to the held jobs.
func heldCall(method, target, what, body string, headers map[string]string) *http.Request {
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	r.Header.Set(wire.HeaderHeld, what)
	r.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		r.Header.Set(k, v)
	}
	return r
}

// askHeaders sign an ask as the filter does.
func askHeaders(secret string, ask wire.QueueRequest) map[string]string {
	b, _ := json.Marshal(ask)
	at := time.Now().UnixMilli()
	return map[string]string{wire.HeaderHeldAsk: base64.RawURLEncoding.EncodeToString(b),
		wire.HeaderSyncTime: strconv.FormatInt(at, 10), wire.HeaderSyncSignature: wire.SyncSignature([]byte(secret), at, b)}
}

// TestHeldJobCalls: a held create needs a signed, valid ask (else a JSON
// error and nothing held); a waiting job answers as a worker's queued job
// does (poll, content, list) and a delete takes it out; without held jobs
// the calls are 404 JSON.
func TestHeldJobCalls(t *testing.T) {
	s, _ := newAPI(t)
	ask := wire.QueueRequest{Node: "envoy-1", Ticket: "t1", Tenant: "trainer", Cost: 10, Pool: 2}
	create := `{"prompt":"a fox","num_frames":16}`
	if code, v := serve(t, s, heldCall("POST", wire.PathVideos, "create", create, askHeaders(syncSecret, ask))); code != http.StatusNotFound || v["error"] == nil {
		t.Fatalf("held create without held jobs = %d %v", code, v)
	}
	// The Envoy answers a forwarded list with one worker job.
	envoy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := wire.CheckForward([]byte(syncSecret), r.Header.Get(wire.HeaderForward), time.Now()); err != nil || r.URL.Path != wire.PathVideos {
			http.Error(w, "unexpected "+r.URL.String(), http.StatusTeapot)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"object":"list","data":[{"id":"video_w.abc","status":"completed"}]}`)
	}))
	defer envoy.Close()
	s.SyncSecret = []byte(syncSecret)
	s.Queue = queue.New(queue.Options{})
	h, err := heldjobs.Open(heldjobs.Options{Dir: t.TempDir(), Queue: s.Queue, Signer: jobid.NewSigner([]byte(syncSecret)),
		Secret: []byte(syncSecret), Envoy: envoy.URL, Defaults: wire.DefaultFilterConfig().Defaults})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go h.Run(ctx)
	defer func() { cancel(); _, _ = h.Close() }()
	s.Held = h

	bad := askHeaders(syncSecret, ask)
	bad[wire.HeaderSyncSignature] = strings.Repeat("0", 64)
	badTenant := ask
	badTenant.Tenant = "a b"
	for _, tc := range []struct {
		name    string
		body    string
		headers map[string]string
		want    int
	}{
		{"no ask", create, nil, http.StatusBadRequest},
		{"ask not base64", create, map[string]string{wire.HeaderHeldAsk: "%%%"}, http.StatusBadRequest},
		{"bad signature", create, bad, http.StatusForbidden},
		{"other secret", create, askHeaders("another secret entirely", ask), http.StatusForbidden},
		{"bad tenant", create, askHeaders(syncSecret, badTenant), http.StatusBadRequest},
		{"no prompt", `{"size":"1x1"}`, askHeaders(syncSecret, ask), http.StatusBadRequest},
		{"not JSON", `prompt=x`, askHeaders(syncSecret, ask), http.StatusBadRequest},
	} {
		if code, v := serve(t, s, heldCall("POST", wire.PathVideos, "create", tc.body, tc.headers)); code != tc.want || v["error"] == nil {
			t.Errorf("%s: %d %v, want %d with an error", tc.name, code, v, tc.want)
		}
	}
	if st := h.Status(); st.Taken != 0 || s.Queue.Waiting() != 0 {
		t.Fatalf("refused creates were held: %+v", st)
	}

	code, job := serve(t, s, heldCall("POST", wire.PathVideos, "create", create, askHeaders(syncSecret, ask)))
	id, _ := job["id"].(string)
	if code != 200 || job["status"] != "queued" || job["prompt"] != "a fox" || id == "" {
		t.Fatalf("held create = %d %v", code, job)
	}
	if code, v := serve(t, s, heldCall("GET", wire.PathVideos+"/"+id, "job", "", nil)); code != 200 || v["status"] != "queued" || v["id"] != id {
		t.Fatalf("poll = %d %v", code, v)
	}
	if code, v := serve(t, s, heldCall("GET", wire.PathVideos+"/"+id+"/content", "job", "", nil)); code != 400 || v["error"] == nil {
		t.Fatalf("content of a waiting job = %d %v", code, v)
	}
	if code, v := serve(t, s, heldCall("POST", wire.PathVideos+"/"+id+"/remix", "job", "{}", nil)); code != 405 || v["error"] == nil {
		t.Fatalf("another call on a waiting job = %d %v", code, v)
	}
	code, list := serve(t, s, heldCall("GET", wire.PathVideos, "list", "", nil))
	data, _ := list["data"].([]any)
	if code != 200 || len(data) != 2 || data[0].(map[string]any)["id"] != id || data[1].(map[string]any)["id"] != "video_w.abc" {
		t.Fatalf("list = %d %v, want the waiting job, then the worker's", code, list)
	}
	if code, v := serve(t, s, heldCall("DELETE", wire.PathVideos+"/"+id, "job", "", nil)); code != 200 || v["deleted"] != true {
		t.Fatalf("delete = %d %v", code, v)
	}
	if code, _ := serve(t, s, heldCall("GET", wire.PathVideos+"/"+id, "job", "", nil)); code != 404 {
		t.Fatalf("poll after delete = %d", code)
	}
	if s.Queue.Waiting() != 0 {
		t.Fatal("the deleted job still waits in the queue")
	}
	forged := jobid.NewSigner([]byte("another secret entirely")).WrapRef(jobid.Ref{ID: "video_x", Worker: wire.HeldWorker})
	if code, v := serve(t, s, heldCall("GET", wire.PathVideos+"/"+forged, "job", "", nil)); code != 404 || v["error"] == nil {
		t.Fatalf("poll of an id the router did not issue = %d %v", code, v)
	}
	code, q := serve(t, s, httptest.NewRequest("GET", wire.PathQueueStatus, nil))
	held, _ := q["held_jobs"].(map[string]any)
	if code != 200 || held["taken"] != 1.0 || held["deleted"] != 1.0 {
		t.Fatalf("GET /queue = %d %v", code, q)
	}
}
