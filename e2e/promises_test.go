package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"mime/multipart"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

// The queue's promises that had no end-to-end test: each holds through a
// real Envoy, the control plane and fake workers.

// queueProbe sends requests to a one-worker router and tells the order
// in which they were answered.
type queueProbe struct {
	t       *testing.T
	r       *routerProc
	wg      sync.WaitGroup
	mu      sync.Mutex
	results map[string]queueResult
}

func newQueueProbe(t *testing.T, r *routerProc, worker *fakeWorker) *queueProbe {
	p := &queueProbe{t: t, r: r, results: map[string]queueResult{}}
	// A blocker keeps the worker busy (30 times slower than the rest), so
	// what follows waits in the queue, in the order it was sent.
	slow := func(x float64) {
		if res := postJSON(t, worker.URL+"/_fake/faults", map[string]any{"slowdown": x}); res.Status != 200 {
			t.Fatalf("slowdown %v: %d %s", x, res.Status, res.Body)
		}
	}
	slow(30)
	p.send("blocker", map[string]string{wire.HeaderTenant: "blocker"})
	eventually(t, 10*time.Second, "the blocker running", func() bool { return stats(t, worker).QueueDepth == 1 })
	slow(1)
	return p
}

func (p *queueProbe) send(name string, headers map[string]string) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		res := sendImage(context.Background(), p.r.Front, headers)
		p.mu.Lock()
		p.results[name] = res
		p.mu.Unlock()
	}()
}

// queued waits until n requests wait in the router's queue.
func (p *queueProbe) queued(n int) {
	p.t.Helper()
	eventually(p.t, 10*time.Second, strconv.Itoa(n)+" requests queued", func() bool { return num(queueStatus(p.t, p.r.API)["waiting"]) >= n })
}

// order waits for every answer and returns the served requests' names in
// the order they were answered (the blocker left out), and all results.
func (p *queueProbe) order() ([]string, map[string]queueResult) {
	p.wg.Wait()
	var order []string
	for name, res := range p.results {
		if res.status == http.StatusOK && name != "blocker" {
			order = append(order, name)
		}
	}
	sort.Slice(order, func(i, j int) bool { return p.results[order[i]].at.Before(p.results[order[j]].at) })
	return order, p.results
}

func position(order []string, name string) int {
	for i, n := range order {
		if n == name {
			return i
		}
	}
	return -1
}

// --client-priority ignore drops a client's priority; --max-client-priority
// caps it: either way a request asking for priority 10 waits its turn
// behind a burst it would otherwise jump. Honoured, it goes first.
func TestClientPriorityIgnoredOrCapped(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		flags     []string
		burstPrio string
		jumps     bool
	}{
		{"honoured", nil, "5", true},
		{"ignored", []string{"--client-priority", "ignore"}, "0", false},
		{"capped at the burst's", []string{"--max-client-priority", "5"}, "5", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ws, urls := startFleet(t, 1, "--time-scale", "1", "--base", "100ms", "--per-step", "0", "--jitter", "0")
			r := startQueueRouter(t, urls, append([]string{"--queue-grant-ahead", "0"}, tc.flags...)...)
			p := newQueueProbe(t, r, ws[0])
			for i := range 6 {
				p.send("burst"+strconv.Itoa(i), map[string]string{wire.HeaderPriority: tc.burstPrio})
			}
			p.queued(6)
			p.send("urgent", map[string]string{wire.HeaderPriority: "10"})
			p.queued(7)
			order, _ := p.order()
			if len(order) != 7 {
				t.Fatalf("served %v, want all 7", order)
			}
			if first := position(order, "urgent") == 0; first != tc.jumps {
				t.Fatalf("answered in order %v: urgent first = %v, want %v", order, first, tc.jumps)
			}
		})
	}
}

// Tenant weights share the fleet 3:1 between two tenants' bursts, and
// --max-queued-per-tenant refuses a tenant's requests over its bound (429
// JSON with Retry-After) while the other tenant still queues.
func TestTenantWeightsAndBound(t *testing.T) {
	t.Parallel()
	ws, urls := startFleet(t, 1, "--time-scale", "1", "--base", "50ms", "--per-step", "0", "--jitter", "0")
	r := startQueueRouter(t, urls, "--queue-grant-ahead", "0", "--tenant-weights", "heavy=3,light=1", "--max-queued-per-tenant", "12")
	p := newQueueProbe(t, r, ws[0])
	for i := range 12 {
		p.send("light"+strconv.Itoa(i), map[string]string{wire.HeaderTenant: "light"})
	}
	p.queued(12)
	for i := range 14 {
		p.send("heavy"+strconv.Itoa(i), map[string]string{wire.HeaderTenant: "heavy"})
	}
	order, results := p.order()
	refused := 0
	for name, res := range results {
		if res.status == http.StatusTooManyRequests {
			refused++
			if !strings.HasPrefix(name, "heavy") || res.header.Get("Retry-After") == "" || !strings.Contains(string(res.body), "max-queued-per-tenant") {
				t.Errorf("%s refused: %d %s (Retry-After %q)", name, res.status, res.body, res.header.Get("Retry-After"))
			}
		}
	}
	if refused != 2 || len(order) != 24 {
		t.Fatalf("%d refused, %d served: want heavy's 2 over its bound refused, the other 24 served", refused, len(order))
	}
	// Both tenants wait from the start of the heavy burst; of the first
	// 8 served after it arrived, weights 3:1 give heavy 6 (equal ones, 4).
	heavy := 0
	for _, name := range order[:8] {
		if strings.HasPrefix(name, "heavy") {
			heavy++
		}
	}
	if heavy < 5 || heavy == 8 {
		t.Fatalf("heavy had %d of the first 8 answers (%v), want about 6 of 8", heavy, order[:8])
	}
}

// --queue-timeout answers a request that waited longer 504 JSON through
// Envoy, saying it never started; the worker never saw it.
func TestQueueTimeoutThroughEnvoy(t *testing.T) {
	t.Parallel()
	ws, urls := startFleet(t, 1, "--time-scale", "1", "--base", "100ms", "--per-step", "0", "--jitter", "0")
	r := startQueueRouter(t, urls, "--queue-timeout", "0.5")
	p := newQueueProbe(t, r, ws[0]) // the blocker runs 3 s
	p.send("late", nil)
	order, results := p.order()
	late := results["late"]
	if late.status != http.StatusGatewayTimeout || !strings.Contains(string(late.body), "never started") || !strings.Contains(string(late.body), `"error"`) {
		t.Fatalf("a request queued past --queue-timeout: %d %s", late.status, late.body)
	}
	if len(order) != 0 || stats(t, ws[0]).ServedTotal != 1 {
		t.Fatalf("served %v and the worker %d: want only the blocker served", order, stats(t, ws[0]).ServedTotal)
	}
	if st := queueStatus(t, r.API); num(st["timed_out"]) != 1 {
		t.Fatalf("GET /queue timed_out = %v, want 1", st["timed_out"])
	}
}

// A drain-mode update never has more than max_unavailable workers out of
// rotation at once, and does take that many at a time (so the bound is
// what holds it back).
func TestDrainUpdateBoundsUnavailable(t *testing.T) {
	t.Parallel()
	_, urls := startFleet(t, 6, "--update-time", "1s")
	r := startQueueRouter(t, urls)
	done := make(chan response, 1)
	go func() {
		done <- postJSON(t, r.Front+"/update_weights_from_disk", map[string]any{
			"model_path": "/ckpt/step-2", "mode": "drain", "max_unavailable": 2, "weight_version": "step-2"})
	}()
	most := 0
	for {
		select {
		case res := <-done:
			if res.Status != 200 || res.JSON(t)["succeeded"] != 6.0 {
				t.Fatalf("drain update = %d %s", res.Status, res.Body)
			}
			if most != 2 {
				t.Fatalf("at most %d workers were out at once during the update, want 2 (max_unavailable)", most)
			}
			return
		case <-time.After(20 * time.Millisecond):
		}
		out := 0
		for _, w := range workersByURL(t, r.API) {
			if w["state"] != "active" {
				out++
			}
		}
		most = max(most, out)
		if out > 2 {
			t.Fatalf("%d workers out of rotation at once, max_unavailable 2", out)
		}
	}
}

// A video job holds its worker's slot until the job ends: with one slot,
// a second job reaches the worker only after the first completed there.
func TestVideoJobHoldsItsSlot(t *testing.T) {
	t.Parallel()
	_, urls := startFleet(t, 1, "--task-type", "T2V", "--time-scale", "1")
	r := startQueueRouter(t, urls)
	create := func() map[string]any {
		return createVideo(t, r.Front, map[string]any{"prompt": "long", "num_inference_steps": 20, "size": "512x512"})
	}
	first := create()
	second := create() // answered at once: the router holds it
	var done map[string]any
	eventually(t, 60*time.Second, "the first job to complete", func() bool {
		res := get(t, r.Front+"/v1/videos/"+first["id"].(string))
		if err := json.Unmarshal(res.Body, &done); err != nil {
			return false
		}
		return done["status"] == "completed"
	})
	// The second job as its worker shows it, once the router sent it.
	var job map[string]any
	eventually(t, 60*time.Second, "the second job to reach the worker", func() bool {
		res := get(t, r.Front+"/v1/videos/"+second["id"].(string))
		return res.Header.Get("X-Worker-Id") != "" && json.Unmarshal(res.Body, &job) == nil
	})
	completed, _ := done["completed_at"].(float64)
	created, _ := job["created_at"].(float64)
	startedFirst, _ := first["created_at"].(float64)
	if completed-startedFirst < 2 {
		t.Fatalf("the first job ran %v s: too short to show anything", completed-startedFirst)
	}
	if created < completed {
		t.Fatalf("the second job reached the worker at %v, before the first completed at %v: two jobs shared one slot", created, completed)
	}
}

// A worker that serves neither a job list nor metrics, and jobs nobody
// polls: the control plane asks the worker about the running job itself,
// so the second job reaches the worker once the first ends, not when the
// filters' 30-minute hold passes.
func TestUnpolledJobEndsWithoutAList(t *testing.T) {
	t.Parallel()
	ws, urls := startFleet(t, 1, "--task-type", "T2V", "--time-scale", "1", "--no-metrics", "--no-job-list")
	r := startQueueRouter(t, urls)
	body := map[string]any{"prompt": "long", "num_inference_steps": 20, "size": "512x512"}
	first := time.Now()
	createVideo(t, r.Front, body)
	time.Sleep(500 * time.Millisecond) // the scenario: the second create half a second later
	// Answered at once; the router holds it until the worker's slot frees.
	createVideo(t, r.Front, body)
	var firstDone, secondSent time.Time
	eventually(t, 60*time.Second, "the first job done and the held one sent", func() bool {
		sent := num(heldStatus(t, r.API)["sent"]) == 1
		if sent && firstDone.IsZero() && stats(t, ws[0]).Served["video"] == 0 {
			t.Fatal("the held job was sent before the first ended: two jobs shared one slot")
		}
		if firstDone.IsZero() && stats(t, ws[0]).Served["video"] >= 1 {
			firstDone = time.Now()
		}
		if sent && secondSent.IsZero() {
			secondSent = time.Now()
		}
		return !firstDone.IsZero() && !secondSent.IsZero()
	})
	// Not a timing target: the 30-minute hold is what this tells apart.
	if secondSent.After(firstDone.Add(10 * time.Second)) {
		t.Fatalf("the second job reached the worker %v after the first job was done on it", secondSent.Sub(firstDone))
	}
	t.Logf("the first job ran %v; the second reached the worker %v after it was done",
		firstDone.Sub(first).Round(10*time.Millisecond), secondSent.Sub(firstDone).Round(10*time.Millisecond))
	eventually(t, 30*time.Second, "both jobs run", func() bool { return stats(t, ws[0]).Served["video"] == 2 })
}

// Requests whose bodies the router does not read, with the queue on: a
// multipart image edit that finds the worker busy waits its turn (its body
// held) and is granted, never counted cancelled; a multipart video create
// (the openai SDK's) is answered at once and held by the router, then
// granted its turn, not counted as a cancelled wait either.
func TestMultipartAndTheQueue(t *testing.T) {
	t.Parallel()
	ws, urls := startFleet(t, 1, "--task-type", "TI2V", "--time-scale", "1", "--base", "100ms", "--per-step", "0", "--jitter", "0")
	r := startQueueRouter(t, urls)
	form := func(fields map[string]string) (*bytes.Buffer, string) {
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		for k, v := range fields {
			_ = mw.WriteField(k, v)
		}
		fw, _ := mw.CreateFormFile("image", "in.png")
		_, _ = fw.Write(bytes.Repeat([]byte{0x89}, 4096))
		_ = mw.Close()
		return &body, mw.FormDataContentType()
	}
	p := newQueueProbe(t, r, ws[0]) // the worker busy for 3 s
	edits := make(chan int, 3)
	for range 3 {
		go func() {
			body, ct := form(map[string]string{"prompt": "edit"})
			res, err := tryDo(context.Background(), "POST", r.Front+wire.PathImageEdits, ct, body)
			if err != nil {
				edits <- -1
				return
			}
			edits <- res.Status
		}()
	}
	p.queued(3)
	for range 3 {
		if code := <-edits; code != http.StatusOK {
			t.Fatalf("a multipart edit answered %d", code)
		}
	}
	p.order()
	st := queueStatus(t, r.API)
	if num(st["granted"]) < 3 || num(st["cancelled"]) != 0 {
		t.Fatalf("GET /queue after three waiting edits: granted %v, cancelled %v", st["granted"], st["cancelled"])
	}
	// Busy again: a multipart video create is answered at once, queued.
	p = newQueueProbe(t, r, ws[0])
	body, ct := form(map[string]string{"prompt": "clip", "num_inference_steps": "2"})
	if res := do(t, "POST", r.Front+wire.PathVideos, ct, body); res.Status != http.StatusOK || res.JSON(t)["status"] != "queued" {
		t.Fatalf("multipart create = %d %s", res.Status, res.Body)
	}
	p.mu.Lock()
	_, blockerDone := p.results["blocker"]
	p.mu.Unlock()
	if blockerDone {
		t.Fatal("the multipart create answered only after the request ahead of it: it waited in the queue")
	}
	p.order()
	if h := heldStatus(t, r.API); num(h["taken"]) != 1 {
		t.Fatalf("the multipart create found the worker busy: held %v, want it taken", h)
	}
	eventually(t, time.Minute, "the held multipart job sent", func() bool { return num(heldStatus(t, r.API)["sent"]) == 1 })
	if st := queueStatus(t, r.API); num(st["cancelled"]) != 0 {
		t.Fatalf("GET /queue counts %v cancelled after a multipart create", st["cancelled"])
	}
}
