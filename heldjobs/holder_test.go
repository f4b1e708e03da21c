package heldjobs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/harness/poll"

	"github.com/diffrouter/diffusion-router/jobid"
	"github.com/diffrouter/diffusion-router/queue"
	"github.com/diffrouter/diffusion-router/wire"
)

var secret = []byte("0123456789abcdef0123456789abcdef")

// fakeEnvoy takes forwarded creates: it checks the forward token and
// answers as a worker does, failing the first failFirst with 503.
type fakeEnvoy struct {
	*httptest.Server
	mu        sync.Mutex
	creates   []string // prompts, in order
	workers   []string
	failFirst int
	// dropFirst takes that many creates and closes the connection
	// without an answer.
	dropFirst int
}

func newFakeEnvoy(t *testing.T) *fakeEnvoy {
	e := &fakeEnvoy{}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := wire.CheckForward(secret, r.Header.Get(wire.HeaderForward), time.Now())
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.failFirst > 0 {
			e.failFirst--
			http.Error(w, `{"error":"no healthy upstream"}`, http.StatusServiceUnavailable)
			return
		}
		e.creates = append(e.creates, fmt.Sprint(body["prompt"]))
		e.workers = append(e.workers, f.Worker)
		if e.dropFirst > 0 {
			e.dropFirst--
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		w.Header().Set(wire.HeaderNode, "envoy-1")
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"job-%d.key.mac","status":"queued"}`, len(e.creates))
	}))
	t.Cleanup(e.Close)
	return e
}

func (e *fakeEnvoy) seen() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.creates...)
}

func openHolder(t *testing.T, dir string, q *queue.Queue, envoy string, maxBytes int64) *Holder {
	t.Helper()
	h, err := Open(Options{Dir: dir, MaxBytes: maxBytes, Queue: q, Signer: jobid.NewSigner(secret), Secret: secret,
		Envoy: envoy, Defaults: wire.DefaultFilterConfig().Defaults})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// run runs h until the test ends (or stop is called) and closes it.
func run(t *testing.T, h *Holder) (stop func() int) {
	ctx, cancel := context.WithCancel(context.Background())
	go h.Run(ctx)
	var once sync.Once
	left := 0
	stop = func() int {
		once.Do(func() {
			cancel()
			var err error
			if left, err = h.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
		})
		return left
	}
	t.Cleanup(func() { stop() })
	return stop
}

func create(prompt string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, wire.PathVideos, strings.NewReader(`{"prompt":"`+prompt+`","num_frames":32}`))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	return r
}

var ask = wire.QueueRequest{Node: "envoy-1", Ticket: "t", Tenant: "default", Cost: 10, Pool: 2}

// videoFleet is one free video worker.
func videoFleet() queue.Fleet {
	return queue.Fleet{View: wire.PickView{Workers: []wire.PickWorker{{Addr: "10.0.0.1:80", Video: true}}}, DefaultSlots: 1,
		ReportedAt: func(string) time.Time { return time.Now().Add(time.Hour) }}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 5*time.Second, 5*time.Millisecond, what, cond)
}

func TestTakeAnswersQueuedAndSendsOnGrant(t *testing.T) {
	e := newFakeEnvoy(t)
	q := queue.New(queue.Options{})
	h := openHolder(t, t.TempDir(), q, e.URL, 0)
	run(t, h)
	first, err := h.Take(create("first"), ask)
	if err != nil {
		t.Fatal(err)
	}
	if first.Status != "queued" || first.Object != "video" || first.Prompt != "first" || first.Seconds != "2.00" || first.Size != "1024x1024" {
		t.Fatalf("answer = %+v, want a queued job as a worker shows it", first)
	}
	if ref, ok := jobid.NewSigner(secret).UnwrapRef(first.ID); !ok || ref.Worker != wire.HeldWorker {
		t.Fatalf("id %q is not a signed held id", first.ID)
	}
	second, err := h.Take(create("second"), ask)
	if err != nil {
		t.Fatal(err)
	}
	j, _ := h.Lookup(second.ID)
	if err := h.Delete(j.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "both queued", func() bool { return q.Waiting() == 1 })
	if n := q.Dispatch(videoFleet()); n != 1 {
		t.Fatalf("dispatch granted %d, want the one job not deleted", n)
	}
	eventually(t, "the first job sent", func() bool { j, _ := h.Lookup(first.ID); return j.State == Sent })
	if got := e.seen(); len(got) != 1 || got[0] != "first" || e.workers[0] != "10.0.0.1:80" {
		t.Fatalf("the Envoy got %v for %v, want the first job alone, for the granted worker", got, e.workers)
	}
	j, _ = h.Lookup(first.ID)
	if j.Wrapped != "job-1.key.mac" || func() bool { id, ok := h.SentAs("job-1.key.mac"); return !ok || id != j.ID }() {
		t.Fatalf("sent job %+v: the worker's id is not recorded", j)
	}
	if st := h.Status(); st.Taken != 2 || st.Sent != 1 || st.Deleted != 1 || st.Waiting != 0 || st.Bytes != 0 {
		t.Fatalf("status %+v", st)
	}
}

func TestFailedSendWaitsAgain(t *testing.T) {
	e := newFakeEnvoy(t)
	e.failFirst = 1
	q := queue.New(queue.Options{})
	h := openHolder(t, t.TempDir(), q, e.URL, 0)
	run(t, h)
	obj, err := h.Take(create("retried"), ask)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "queued", func() bool { return q.Waiting() == 1 })
	q.Dispatch(videoFleet())
	// The 503 puts it back in the queue; the next grant sends it.
	eventually(t, "queued again", func() bool { return q.Waiting() == 1 })
	q.Dispatch(videoFleet())
	eventually(t, "sent", func() bool { j, _ := h.Lookup(obj.ID); return j.State == Sent })
	if j, _ := h.Lookup(obj.ID); j.Sends != 2 || len(e.seen()) != 1 {
		t.Fatalf("sends %d, worker saw %v; want two sends, one taken", j.Sends, e.seen())
	}
}

func TestBounds(t *testing.T) {
	q := queue.New(queue.Options{})
	h := openHolder(t, t.TempDir(), q, "http://127.0.0.1:1", 50)
	big := httptest.NewRequest(http.MethodPost, wire.PathVideos, strings.NewReader(`{"prompt":"`+strings.Repeat("x", 200)+`"}`))
	var ref *Refusal
	if _, err := h.Take(big, ask); !errorsAs(err, &ref) || ref.Status != http.StatusRequestEntityTooLarge {
		t.Fatalf("a body over the bound: %v, want 413", err)
	}
	if _, err := h.Take(create("fits"), ask); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Take(create("fits too"), ask); !errorsAs(err, &ref) || ref.Status != http.StatusTooManyRequests || ref.RetryAfter == 0 {
		t.Fatalf("a body over what is left: %v, want 429 with Retry-After", err)
	}
	bad := httptest.NewRequest(http.MethodPost, wire.PathVideos, strings.NewReader(`{"size":"1x1"}`))
	if _, err := h.Take(bad, ask); !errorsAs(err, &ref) || ref.Status != http.StatusBadRequest {
		t.Fatalf("a create without a prompt: %v, want 400", err)
	}
	if st := h.Status(); st.Taken != 1 || st.Waiting != 1 {
		t.Fatalf("refused creates changed the state: %+v", st)
	}
}

func errorsAs(err error, ref **Refusal) bool {
	r, ok := err.(*Refusal)
	if ok {
		*ref = r
	}
	return ok
}

// Jobs stored by a router that stopped wait again in the next; one that
// was being sent is sent again and counted.
func TestRestoredJobsWaitAgain(t *testing.T) {
	e := newFakeEnvoy(t)
	dir := t.TempDir()
	q := queue.New(queue.Options{})
	h := openHolder(t, dir, q, e.URL, 0)
	var ids []string
	for _, p := range []string{"a", "b"} {
		obj, err := h.Take(create(p), ask)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, obj.ID)
	}
	// b was being sent when the router stopped.
	jb, _ := h.Lookup(ids[1])
	h.mu.Lock()
	h.jobs[jb.ID].State = Sending
	h.mu.Unlock()
	if err := h.save(h.jobs[jb.ID]); err != nil {
		t.Fatal(err)
	}
	if left, err := h.Close(); err != nil || left != 2 {
		t.Fatalf("close: %d left, %v", left, err)
	}

	q2 := queue.New(queue.Options{})
	h2 := openHolder(t, dir, q2, e.URL, 0)
	run(t, h2)
	eventually(t, "both waiting again", func() bool { return q2.Waiting() == 2 })
	for i := 1; i <= 2; i++ {
		q2.Dispatch(videoFleet())
		eventually(t, "a send", func() bool { return len(e.seen()) == i })
		if i == 1 {
			eventually(t, "the second waiting", func() bool { return q2.Waiting() == 1 })
		}
	}
	if got := e.seen(); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("sent %v, want a then b (their order)", got)
	}
	if st := h2.Status(); st.Resent != 1 {
		t.Fatalf("resent = %d, want 1 (the job being sent at the stop)", st.Resent)
	}
}

func TestDescribe(t *testing.T) {
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	_ = mw.WriteField("prompt", "a cat")
	_ = mw.WriteField("size", "720x1280")
	_ = mw.WriteField("seconds", "4")
	fw, _ := mw.CreateFormFile("input_reference", "in.png")
	_, _ = fw.Write(bytes.Repeat([]byte{0x89}, 1<<16))
	_ = mw.Close()
	d := wire.Defaults{Width: 1024, Height: 768, VideoFrames: 80}
	for name, tc := range map[string]struct {
		ct, body string
		want     Object
		err      bool
	}{
		"json defaults": {"application/json", `{"prompt":"p"}`, Object{Prompt: "p", Size: "1024x768", Seconds: "5.00"}, false},
		"json fields":   {"application/json", `{"prompt":"p","model":"m","width":640,"height":480,"num_frames":16}`, Object{Prompt: "p", Model: "m", Size: "640x480", Seconds: "1.00"}, false},
		"multipart":     {mw.FormDataContentType(), mp.String(), Object{Prompt: "a cat", Size: "720x1280", Seconds: "4"}, false},
		"no prompt":     {"application/json", `{"model":"m"}`, Object{}, true},
		"not json":      {"text/plain", `prompt=p`, Object{}, true},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := describe(tc.ct, strings.NewReader(tc.body), d)
			if tc.err {
				if err == nil {
					t.Fatalf("got %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.want.Object, tc.want.Status, tc.want.Quality = "video", "queued", "standard"
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// A send whose answer was lost after the worker may have taken it: the job
// waits again, and the possible second run is counted.
func TestLostAnswerCounted(t *testing.T) {
	e := newFakeEnvoy(t)
	e.dropFirst = 1
	q := queue.New(queue.Options{})
	h := openHolder(t, t.TempDir(), q, e.URL, 0)
	run(t, h)
	obj, err := h.Take(create("lost"), ask)
	if err != nil {
		t.Fatal(err)
	}
	q.Dispatch(videoFleet())
	eventually(t, "queued again", func() bool { j, _ := h.Lookup(obj.ID); return j.State == Waiting && j.Sends == 1 && q.Waiting() == 1 })
	q.Dispatch(videoFleet())
	eventually(t, "sent", func() bool { j, _ := h.Lookup(obj.ID); return j.State == Sent })
	if st := h.Status(); st.Resent != 1 || len(e.seen()) != 2 {
		t.Fatalf("resent %d, the worker saw %v; want the lost answer counted", st.Resent, e.seen())
	}
}

// forget keeps at most maxRecords records, dropping the oldest ended
// ones, and every record of a job ended longer than Retain ago.
func TestForgetBoundsRecords(t *testing.T) {
	h := openHolder(t, t.TempDir(), queue.New(queue.Options{}), "http://127.0.0.1:1", 0)
	defer h.Close()
	now := time.Now()
	h.o.Now = func() time.Time { return now }
	for i := range maxRecords + 10 {
		id := fmt.Sprintf("video_%06d", i)
		h.jobs[id] = &Job{ID: id, State: Failed, Ended: now.Add(-time.Duration(maxRecords+10-i) * time.Millisecond)}
	}
	h.jobs["video_old"] = &Job{ID: "video_old", State: Deleted, Ended: now.Add(-h.o.Retain - time.Minute)}
	h.jobs["video_waiting"] = &Job{ID: "video_waiting", State: Waiting, Created: now.Add(-48 * time.Hour)}
	h.forget()
	if len(h.jobs) != maxRecords {
		t.Fatalf("%d records kept, want %d", len(h.jobs), maxRecords)
	}
	for _, id := range []string{"video_old", "video_000000", "video_000010"} {
		if _, kept := h.jobs[id]; kept {
			t.Fatalf("%s kept: the oldest ended records go first", id)
		}
	}
	for _, id := range []string{"video_waiting", "video_000011"} {
		if _, kept := h.jobs[id]; !kept {
			t.Fatalf("%s dropped", id)
		}
	}
}
