package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/diffrouter/diffusion-router/traces"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/registry"
)

// operations are the fleet-wide calls (weight updates, broadcasts), one at
// a time.
type operations struct {
	reg     *registry.Registry
	cfg     Config
	log     *logrus.Entry
	states  *states
	workers *workerClient
	envoys  *envoyWatch
	drains  *drainer
	// quarantine is Manager.Quarantine: out of rotation, drain cancelled.
	quarantine func(ctx context.Context, key string, cause Cause, reason string) (registry.Worker, bool, error)

	lock opLock
}

// BusyError is returned when a fleet-wide operation is already running:
// weight updates and other fleet calls never interleave.
type BusyError struct{ Running string }

func (e *BusyError) Error() string {
	return fmt.Sprintf("fleet operation %s is running; retry when it has finished", e.Running)
}

// ErrNoTargets means no worker was eligible for a fleet-wide call.
var ErrNoTargets = errors.New("no eligible workers")

// opLock serialises fleet-wide operations. Calls from the API fail fast with
// a BusyError; a joining worker's catch-up waits its turn.
type opLock struct {
	mu      sync.Mutex
	running string
	free    chan struct{} // closed when the running operation ends
}

func (l *opLock) try(id string) (func(), error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.running != "" {
		return nil, &BusyError{Running: l.running}
	}
	return l.takeLocked(id), nil
}

func (l *opLock) wait(ctx context.Context, id string) (func(), error) {
	for {
		l.mu.Lock()
		if l.running == "" {
			release := l.takeLocked(id)
			l.mu.Unlock()
			return release, nil
		}
		free := l.free
		l.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for fleet operation: %w", ctx.Err())
		case <-free:
		}
	}
}

func (l *opLock) takeLocked(id string) func() {
	l.running = id
	l.free = make(chan struct{})
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.running = ""
		close(l.free)
	}
}

// Running returns the id of the fleet operation in progress, if any.
func (op *operations) Running() string {
	op.lock.mu.Lock()
	defer op.lock.mu.Unlock()
	return op.lock.running
}

// Outcome is the result of a fleet-wide operation.
type Outcome struct {
	ID          string       `json:"operation_id"`
	Results     []CallResult `json:"results"`
	Succeeded   int          `json:"succeeded"`
	Failed      int          `json:"failed"`
	Quarantined []string     `json:"quarantined"`
	// Rejected is set when every worker refused the call with the same
	// client error: the request is at fault, not the workers, so none was
	// quarantined (sglang applies such calls all-or-nothing per worker).
	Rejected bool `json:"rejected"`
}

// rejectedByAll reports whether at least two workers answered and all of
// them refused with one and the same 4xx status.
func rejectedByAll(results []CallResult) bool {
	if len(results) < 2 {
		return false
	}
	first := results[0].StatusCode
	if first < 400 || first > 499 {
		return false
	}
	for _, r := range results {
		if r.StatusCode != first {
			return false
		}
	}
	return true
}

func (o *Outcome) add(r CallResult, quarantined bool) {
	o.Results = append(o.Results, r)
	if r.OK() {
		o.Succeeded++
	} else {
		o.Failed++
		if quarantined {
			o.Quarantined = append(o.Quarantined, r.WorkerURL)
		}
	}
}

func (o *Outcome) sort() {
	sort.Slice(o.Results, func(i, j int) bool { return o.Results[i].WorkerURL < o.Results[j].WorkerURL })
	sort.Strings(o.Quarantined)
}

// CallSpec describes a fleet-wide call other than a weight update.
type CallSpec struct {
	Path string
	Body []byte
	// Target picks the workers to call.
	Target func(registry.Worker) bool
	// OnSuccess records what a successful call changed.
	OnSuccess func(registry.Worker) error
	// Quarantine takes workers whose call failed out of rotation: they may
	// hold a state (adapters, memory) that differs from the fleet's.
	Quarantine bool
	Timeout    time.Duration
}

// Call runs a fleet-wide call on every target worker in parallel.
func (op *operations) Call(ctx context.Context, spec CallSpec) (_ Outcome, err error) {
	id := newOpID(strings.TrimPrefix(spec.Path, "/"))
	ctx, span := op.cfg.Tracer.Start(ctx, "fleet "+spec.Path, trace.WithAttributes(attribute.String("diffusion.op", id)))
	defer endSpan(span, &err)
	release, err := op.lock.try(id)
	if err != nil {
		return Outcome{}, err
	}
	defer release()
	out := Outcome{ID: id, Quarantined: []string{}}
	var targets []registry.Worker
	for _, w := range op.reg.Snapshot().Workers {
		if spec.Target(w) {
			targets = append(targets, w)
		}
	}
	if len(targets) == 0 {
		return out, ErrNoTargets
	}
	results := op.workers.callAll(ctx, targets, spec.Path, spec.Body, spec.Timeout)
	if rejectedByAll(results) {
		out.Rejected = true
		for _, r := range results {
			out.add(r, false)
		}
		out.sort()
		return out, nil
	}
	for i, r := range results {
		w := targets[i]
		if r.OK() {
			if spec.OnSuccess != nil {
				if err := spec.OnSuccess(w); err != nil {
					op.log.WithError(err).WithField("worker", w.Key()).Warn("could not record the call's result")
				}
			}
			out.add(r, false)
			continue
		}
		q := false
		if spec.Quarantine {
			reason := fmt.Sprintf("%s failed: %s", spec.Path, describe(r))
			if _, _, err := op.states.move(w.Key(), CauseCallFailed, reason, w.State); err == nil {
				q = true
			}
		}
		out.add(r, q)
	}
	out.sort()
	// Answer once every Envoy routes by the new state (asleep, quarantined),
	// and workers that came back (woken) pass their first health check.
	gen := op.reg.Snapshot().Generation
	op.envoys.waitSynced(ctx, gen)
	var back sync.WaitGroup
	for _, w := range targets {
		if cur, ok := op.reg.Get(w.Key()); ok && !w.InEnvoy() && cur.InEnvoy() {
			back.Add(1)
			go func() { defer back.Done(); op.envoys.waitRoutable(ctx, cur, gen) }()
		}
	}
	back.Wait()
	span.SetAttributes(attribute.Int("diffusion.workers", len(targets)), attribute.Int("diffusion.failed", out.Failed))
	withTrace(ctx, op.log).WithFields(logrus.Fields{"op": id, "workers": len(targets), "failed": out.Failed}).Info("fleet-wide call done")
	return out, nil
}

// endSpan ends a fleet operation's span, failed if it returned an error.
func endSpan(span trace.Span, err *error) {
	if *err != nil {
		traces.Fail(span, (*err).Error())
	}
	span.End()
}

// withTrace adds ctx's trace id to a log entry (when ctx is traced), so a
// call's log lines lead to its trace.
func withTrace(ctx context.Context, log *logrus.Entry) *logrus.Entry {
	if id := traces.ID(ctx); id != "" {
		return log.WithField("trace_id", id)
	}
	return log
}

// describe summarises a failed call for a quarantine reason.
func describe(r CallResult) string {
	b, _ := json.Marshal(r.Body)
	msg := string(b)
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	return fmt.Sprintf("status %d: %s", r.StatusCode, msg)
}

func newOpID(kind string) string {
	return fmt.Sprintf("%s-%d", kind, time.Now().UnixNano())
}
