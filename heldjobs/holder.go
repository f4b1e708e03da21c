// Package heldjobs holds video jobs in the router: a video create that
// finds no free slot is answered at once with a job id of the router's,
// stored on disk (its body and headers as the client sent them), and
// waits in the router's queue like any request; when the queue grants it
// a worker, the control plane sends the create through an Envoy, whose
// filter binds it to that worker (wire.HeaderForward) and signs the
// worker's job id as for any create. Calls about the job then go to the
// worker under that id; while it waits the control plane answers them,
// and a delete takes it out before any worker saw it.
//
// Exactly once: a job is stored before its create is answered; its state
// is written (synced) before its create is sent (Sending) and once its
// worker took it (Sent). A crash between the two is the one window in
// which a job can run twice: such a job is sent again at start, counted
// (Stats.Resent) and logged.
package heldjobs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/jobid"
	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/queue"
	"github.com/diffrouter/diffusion-router/wire"
)

// Node is the queue node held jobs wait under (no Envoy is named so).
const Node = "~held"

// Defaults.
const (
	// DefaultRetain keeps an ended job's record (the map from its id to
	// its worker's) this long.
	DefaultRetain = 24 * time.Hour
	// maxRecords bounds the records kept; the oldest ended go first.
	maxRecords = 100000
	// retryAfterFailedSend is the pause before a job whose send failed
	// (no worker answered, or a busy one) waits again.
	retryAfterFailedSend = 500 * time.Millisecond
	// noWorkerRetry is how often a job for which no worker of its kind
	// is in rotation asks again.
	noWorkerRetry = time.Second
)

// Options configure a Holder.
type Options struct {
	// Dir is where jobs are stored (the router's state directory).
	Dir string
	// MaxBytes bounds the bodies stored at once (0: wire.HeldDefaultMaxBytes).
	MaxBytes int64
	Queue    *queue.Queue
	// Signer signs held ids; Secret signs forwards (the job-id secret).
	Signer jobid.Signer
	Secret []byte
	// Envoy is the base URL of the Envoy jobs are sent through.
	Envoy  string
	Client *http.Client
	// Defaults fill a queued answer's size and seconds; Model, if set,
	// its model when the create names none (what a video worker serves).
	Defaults wire.Defaults
	Model    func() string
	// Timeout bounds a job's wait for a worker of its kind (0: none); the
	// queue's own --queue-timeout bounds its wait for a slot.
	Timeout time.Duration
	Retain  time.Duration
	Log     *logrus.Entry
	Now     func() time.Time
}

// Stats are the holder's counters since start.
type Stats struct {
	Taken   uint64 `json:"taken"`
	Sent    uint64 `json:"sent"`
	Resent  uint64 `json:"resent"`
	Failed  uint64 `json:"failed"`
	Deleted uint64 `json:"deleted"`
}

// Holder holds video jobs. Its methods are safe for concurrent use.
type Holder struct {
	o  Options
	st *store

	mu    sync.Mutex
	jobs  map[string]*Job
	bytes int64
	stats Stats
	// ctx is Run's; jobs taken before Run wait for it. done closes when
	// Run has returned.
	ctx  context.Context
	wg   sync.WaitGroup
	done chan struct{}
	// pending are the queue entries of jobs taken before Run.
	pending map[string]*queue.Entry
	// byWrapped finds a sent job by its worker's id (as signed).
	byWrapped map[string]string
}

// Open loads the jobs stored in o.Dir: those waiting (or being sent when
// the last router stopped) wait again once Run starts.
func Open(o Options) (*Holder, error) {
	if o.MaxBytes <= 0 {
		o.MaxBytes = wire.HeldDefaultMaxBytes
	}
	if o.Retain <= 0 {
		o.Retain = DefaultRetain
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Client == nil {
		o.Client = &http.Client{}
	}
	if o.Log == nil {
		o.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	st, err := openStore(o.Dir)
	if err != nil {
		return nil, err
	}
	jobs, err := st.load()
	if err != nil {
		st.close()
		return nil, err
	}
	h := &Holder{o: o, st: st, jobs: map[string]*Job{}, done: make(chan struct{}), pending: map[string]*queue.Entry{}, byWrapped: map[string]string{}}
	for _, j := range jobs {
		h.jobs[j.ID] = j
		if j.State == Sent {
			h.byWrapped[j.Wrapped] = j.ID
		}
		if j.State.open() {
			h.bytes += j.Bytes
		}
	}
	return h, nil
}

// Run sends held jobs as the queue grants them until ctx ends; jobs still
// waiting then stay stored for the next start (Close).
func (h *Holder) Run(ctx context.Context) {
	defer close(h.done)
	h.mu.Lock()
	h.ctx = ctx
	waiting := make([]*Job, 0)
	for _, j := range h.jobs {
		if j.State.open() {
			waiting = append(waiting, j)
		}
	}
	// In the order they came: the queue keeps arrival order per tenant.
	slices.SortFunc(waiting, func(a, b *Job) int { return a.Created.Compare(b.Created) })
	for _, j := range waiting {
		if j.State == Sending {
			// It may have reached its worker before the last router
			// stopped: sent again, and said so.
			h.stats.Resent++
			h.o.Log.WithFields(logrus.Fields{"job": j.ID, "worker": j.Worker}).
				Warn("held job was being sent when the router stopped; sending it again: it may run twice")
			j.State = Waiting
		}
		e, ok := h.pending[j.ID]
		delete(h.pending, j.ID)
		if !ok {
			// Entered here, in their order (a refusal: its goroutine
			// tries again).
			e, _ = h.o.Queue.Enter(request(j))
		}
		h.start(j, e)
	}
	if n := len(waiting); n > 0 {
		h.o.Log.WithField("jobs", n).Info("held video jobs restored; they wait for their turn again")
	}
	h.mu.Unlock()

	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			h.wg.Wait()
			return
		case <-t.C:
			h.forget()
		}
	}
}

// Close waits for Run to end (its context first) and closes the store;
// it returns how many jobs still wait there for the next start.
func (h *Holder) Close() (int, error) {
	h.mu.Lock()
	running := h.ctx != nil
	h.mu.Unlock()
	if running {
		<-h.done
	}
	return h.Status().Waiting, h.st.close()
}

// start runs a job's turn, entered in the queue already (e) or not
// (nil); h.mu is held.
func (h *Holder) start(j *Job, e *queue.Entry) {
	if h.ctx == nil {
		h.pending[j.ID] = e // Run starts it
		return
	}
	h.wg.Add(1)
	go h.run(h.ctx, j, e)
}

// request is a job as the queue takes it.
func request(j *Job) queue.Request {
	return queue.Request{Key: queue.Key{Node: Node, Ticket: j.ID}, Priority: j.Priority, Tenant: j.Tenant, Cost: j.Cost,
		Pool: leastwork.PoolVideo, Model: j.Model, Version: j.Version, MinVersion: j.MinVersion, Group: j.Group}
}

// Refusal is a create the holder did not take: the status and reason to
// answer with (RetryAfter in seconds, 0: none).
type Refusal struct {
	Status     int
	Msg        string
	RetryAfter int
}

func (r *Refusal) Error() string { return r.Msg }

// Take stores a create and queues its job as ask says (the filter's
// queue request: priority, tenant, cost, model); it returns the answer a
// worker gives for a queued job, under the job's signed id.
func (h *Holder) Take(r *http.Request, ask wire.QueueRequest) (Object, error) {
	if r.ContentLength > h.o.MaxBytes {
		return Object{}, &Refusal{Status: http.StatusRequestEntityTooLarge,
			Msg: fmt.Sprintf("the create's body (%d bytes) is over the %d bytes the router may hold (--max-held-bytes)", r.ContentLength, h.o.MaxBytes)}
	}
	h.mu.Lock()
	room := h.o.MaxBytes - h.bytes
	h.mu.Unlock()
	if room <= 0 {
		return Object{}, h.full()
	}
	raw := make([]byte, 12)
	if _, err := rand.Read(raw); err != nil {
		return Object{}, fmt.Errorf("held jobs: job id: %w", err)
	}
	id := "video_" + hex.EncodeToString(raw)
	n, err := h.st.writeBody(id, r.Body, room)
	switch {
	case errors.Is(err, errTooLarge) && room >= h.o.MaxBytes:
		return Object{}, &Refusal{Status: http.StatusRequestEntityTooLarge,
			Msg: fmt.Sprintf("the create's body is over the %d bytes the router may hold (--max-held-bytes)", h.o.MaxBytes)}
	case errors.Is(err, errTooLarge):
		return Object{}, h.full()
	case err != nil:
		return Object{}, &Refusal{Status: http.StatusBadRequest, Msg: "reading the create's body: " + err.Error()}
	}
	obj, err := h.describe(id, r.Header.Get("Content-Type"))
	if err != nil {
		h.st.removeBody(id)
		return Object{}, &Refusal{Status: http.StatusBadRequest, Msg: err.Error()}
	}
	if obj.Model == "" && h.o.Model != nil {
		obj.Model = h.o.Model()
	}
	now := h.o.Now()
	obj.CreatedAt = now.Unix()
	j := &Job{ID: id, Path: r.URL.RequestURI(), Header: keptHeaders(r.Header), Bytes: n, State: Waiting, Object: obj,
		Created: now, Model: ask.Model, Priority: ask.Priority, Tenant: ask.Tenant, Cost: ask.Cost,
		Version: ask.Version, MinVersion: ask.MinVersion, Group: ask.Group}
	if !wire.ValidTenant(j.Tenant) {
		j.Tenant = wire.DefaultTenant
	}
	h.mu.Lock()
	if h.bytes+n > h.o.MaxBytes {
		h.mu.Unlock()
		h.st.removeBody(id)
		return Object{}, h.full()
	}
	h.bytes += n
	h.mu.Unlock()
	undo := func() {
		h.mu.Lock()
		h.bytes -= n
		h.mu.Unlock()
		h.st.removeBody(id)
	}
	// In the queue before its create is answered: a client's creates
	// keep their order.
	e, err := h.o.Queue.Enter(request(j))
	if err != nil {
		undo()
		return Object{}, &Refusal{Status: http.StatusTooManyRequests, RetryAfter: 5, Msg: err.Error()}
	}
	if err := h.save(j); err != nil {
		h.o.Queue.Cancel(request(j).Key)
		undo()
		return Object{}, err
	}
	h.mu.Lock()
	h.jobs[id] = j
	h.stats.Taken++
	h.start(j, e)
	h.mu.Unlock()
	obj.ID = h.PublicID(id)
	return obj, nil
}

func (h *Holder) full() error {
	return &Refusal{Status: http.StatusTooManyRequests, RetryAfter: 5,
		Msg: fmt.Sprintf("the router holds %d bytes of waiting video jobs, its bound (--max-held-bytes); try again when some have started", h.o.MaxBytes)}
}

func (h *Holder) describe(id, contentType string) (Object, error) {
	f, err := os.Open(h.st.bodyPath(id))
	if err != nil {
		return Object{}, err
	}
	defer f.Close()
	return describe(contentType, f, h.o.Defaults)
}

// PublicID is the id a client sees for the job the router calls id.
func (h *Holder) PublicID(id string) string {
	return h.o.Signer.WrapRef(jobid.Ref{ID: id, Worker: wire.HeldWorker})
}

// save writes a job's record as it is now.
func (h *Holder) save(j *Job) error {
	h.mu.Lock()
	c := *j
	h.mu.Unlock()
	return h.st.put(&c)
}

// run is one job's turn: it waits in the queue, then is sent; a send no
// worker took waits again.
func (h *Holder) run(ctx context.Context, j *Job, e *queue.Entry) {
	defer h.wg.Done()
	key := request(j).Key
	var noWorkerSince time.Time
	for {
		var err error
		if e == nil {
			// Entered under h.mu: a delete either finds it in the queue
			// or stops it here.
			h.mu.Lock()
			if j.State != Waiting {
				h.mu.Unlock()
				return
			}
			e, err = h.o.Queue.Enter(request(j))
			h.mu.Unlock()
		}
		var g queue.Grant
		if err == nil {
			g, err = e.Wait(ctx)
		}
		e = nil
		switch {
		case ctx.Err() != nil:
			return // stopping: it stays stored
		case err == nil:
		case errors.Is(err, queue.ErrCancelled):
			return // deleted
		case errors.Is(err, queue.ErrTimeout):
			h.fail(j, "queue_timeout", err.Error())
			return
		case errors.Is(err, queue.ErrVersion):
			h.fail(j, "weight_version", err.Error())
			return
		case errors.Is(err, queue.ErrNoWorker):
			if noWorkerSince.IsZero() {
				noWorkerSince = h.o.Now()
			}
			if h.o.Timeout > 0 && h.o.Now().Sub(noWorkerSince) > h.o.Timeout {
				h.fail(j, "no_worker", "no video worker was in rotation for --queue-timeout; the job never started")
				return
			}
			if !sleep(ctx, noWorkerRetry) {
				return
			}
			continue
		default:
			// Full or a duplicate ticket (a restore over the bounds):
			// it waits its turn to wait.
			if !sleep(ctx, retryAfterFailedSend) {
				return
			}
			continue
		}
		noWorkerSince = time.Time{}
		if !h.moveTo(j, Waiting, Sending, g.Worker) {
			return // deleted as it was granted
		}
		if err := h.save(j); err != nil {
			h.o.Log.WithError(err).WithField("job", j.ID).Error("held job: recording its send")
		}
		out := h.send(ctx, j, g.Worker)
		switch {
		case out.sent:
			h.mu.Lock()
			j.State, j.Wrapped, j.Worker, j.SentAt = Sent, out.wrapped, out.worker, h.o.Now()
			h.byWrapped[j.Wrapped] = j.ID
			h.stats.Sent++
			h.bytes -= j.Bytes
			h.mu.Unlock()
			if err := h.save(j); err != nil {
				h.o.Log.WithError(err).WithField("job", j.ID).Error("held job: recording that its worker took it")
			}
			h.st.removeBody(j.ID)
			if out.node != "" {
				h.o.Queue.Handed(key, out.node)
			}
			h.o.Log.WithFields(logrus.Fields{"job": j.ID, "worker": out.worker, "waited_s": h.o.Now().Sub(j.Created).Seconds()}).Debug("held job sent")
			return
		case out.refused != "":
			h.fail(j, "worker_refused", out.refused)
			return
		default:
			log := h.o.Log.WithFields(logrus.Fields{"job": j.ID, "worker": g.Worker, "reason": out.retry})
			if out.maybe {
				h.mu.Lock()
				h.stats.Resent++
				h.mu.Unlock()
				log.Warn("held job: its send failed after it may have reached the worker; it waits again and may run twice")
			} else {
				log.Info("held job: no worker took it; it waits again")
			}
			h.moveTo(j, Sending, Waiting, "")
			if err := h.save(j); err != nil {
				h.o.Log.WithError(err).WithField("job", j.ID).Error("held job: recording that it waits again")
			}
			if !sleep(ctx, retryAfterFailedSend) {
				return
			}
		}
	}
}

// moveTo changes a job's state from one to another; false if it was not
// in from (deleted meanwhile).
func (h *Holder) moveTo(j *Job, from, to State, worker string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if j.State != from {
		return false
	}
	j.State = to
	if to == Sending {
		j.Sends++
		j.Worker = worker
	}
	return true
}

// fail ends a job that never ran.
func (h *Holder) fail(j *Job, code, msg string) {
	h.mu.Lock()
	if !j.State.open() {
		h.mu.Unlock()
		return
	}
	j.State, j.ErrorCode, j.Error, j.Ended = Failed, code, msg, h.o.Now()
	h.bytes -= j.Bytes
	h.stats.Failed++
	h.mu.Unlock()
	h.st.removeBody(j.ID)
	if err := h.save(j); err != nil {
		h.o.Log.WithError(err).WithField("job", j.ID).Error("held job: recording its failure")
	}
	h.o.Log.WithFields(logrus.Fields{"job": j.ID, "code": code}).Warn("held job failed before it started: " + msg)
}

// Lookup finds a job by the id its client holds.
func (h *Holder) Lookup(public string) (Job, bool) {
	ref, ok := h.o.Signer.UnwrapRef(public)
	if !ok || ref.Worker != wire.HeldWorker {
		return Job{}, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	j, ok := h.jobs[ref.ID]
	if !ok {
		return Job{}, false
	}
	return *j, true
}

// ErrNotWaiting: the job no longer waits (its worker has it, or it ended).
var ErrNotWaiting = errors.New("the job no longer waits in the router")

// Delete takes a waiting job out of the queue: no worker ever sees it.
func (h *Holder) Delete(id string) error {
	h.mu.Lock()
	j, ok := h.jobs[id]
	if !ok || j.State != Waiting {
		h.mu.Unlock()
		return ErrNotWaiting
	}
	j.State, j.Ended = Deleted, h.o.Now()
	h.bytes -= j.Bytes
	h.stats.Deleted++
	h.mu.Unlock()
	h.o.Queue.Cancel(request(j).Key)
	h.st.removeBody(id)
	return h.save(j)
}

// Waiting returns the jobs that wait (or are being sent), oldest first.
func (h *Holder) Waiting() []Job {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []Job
	for _, j := range h.jobs {
		if j.State.open() {
			out = append(out, *j)
		}
	}
	slices.SortFunc(out, func(a, b Job) int { return a.Created.Compare(b.Created) })
	return out
}

// SentAs returns the id (the router's) of the held job its worker knows
// as wrapped (its id as its Envoy signed it), if it is one.
func (h *Holder) SentAs(wrapped string) (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	id, ok := h.byWrapped[wrapped]
	return id, ok
}

// Status is what GET /queue and the metrics show of held jobs.
type Status struct {
	Waiting           int     `json:"waiting"`
	Bytes             int64   `json:"bytes"`
	OldestWaitSeconds float64 `json:"oldest_wait_seconds"`
	Stats
}

// Status reports the held jobs.
func (h *Holder) Status() Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := Status{Bytes: h.bytes, Stats: h.stats}
	var oldest time.Time
	for _, j := range h.jobs {
		if j.State.open() {
			s.Waiting++
			if oldest.IsZero() || j.Created.Before(oldest) {
				oldest = j.Created
			}
		}
	}
	if !oldest.IsZero() {
		s.OldestWaitSeconds = h.o.Now().Sub(oldest).Seconds()
	}
	return s
}

// forget drops the records of jobs ended longer than Retain ago, and the
// oldest ended ones over maxRecords.
func (h *Holder) forget() {
	h.mu.Lock()
	now := h.o.Now()
	var ended []*Job
	for _, j := range h.jobs {
		if j.State.open() {
			continue
		}
		ended = append(ended, j)
	}
	slices.SortFunc(ended, func(a, b *Job) int { return endedAt(a).Compare(endedAt(b)) })
	var drop []string
	for _, j := range ended {
		if now.Sub(endedAt(j)) > h.o.Retain || len(h.jobs) > maxRecords {
			drop = append(drop, j.ID)
			delete(h.jobs, j.ID)
			delete(h.byWrapped, j.Wrapped)
		}
	}
	h.mu.Unlock()
	for _, id := range drop {
		if err := h.st.drop(id); err != nil {
			h.o.Log.WithError(err).WithField("job", id).Warn("held job: forgetting its record")
		}
	}
}

func endedAt(j *Job) time.Time {
	if !j.SentAt.IsZero() {
		return j.SentAt
	}
	return j.Ended
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
