package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/diffrouter/diffusion-router/traces"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/registry"
)

// Update modes.
const (
	// ModeInplace sends the update to every worker at once; each worker
	// queues it behind its in-flight generations (the Python routers' way).
	ModeInplace = "inplace"
	// ModeDrain takes workers out of rotation in batches, waits for their
	// in-flight requests, updates them and puts them back: no request is
	// ever served by a worker whose weights changed under it.
	ModeDrain = "drain"
)

// UpdateSpec is one update_weights_from_disk through the router.
type UpdateSpec struct {
	// Request is what each worker receives (model_path and whatever else the
	// caller sent, without the router's own fields).
	Request map[string]any
	// Version names the new weights; empty: the next number.
	Version        string
	Mode           string
	MaxUnavailable int
	// Timeout bounds each worker's update (and, in drain mode, its drain).
	Timeout time.Duration
}

// UpdateOutcome is the answer to an update.
type UpdateOutcome struct {
	Outcome
	Version   string `json:"weight_version"`
	ModelPath string `json:"model_path"`
	Mode      string `json:"mode"`
	// WaitedForPinnedS is how long the update waited for requests that
	// only the old weights serve (pinned, or of a group on them) before
	// taking the last workers holding them.
	WaitedForPinnedS float64 `json:"waited_for_pinned_s,omitempty"`
}

// ErrCatchUp means a joining worker could not load the fleet's weights.
var ErrCatchUp = errors.New("worker could not load the fleet's weights")

// UpdateWeights switches the fleet to new weights. Workers whose update fails
// or times out may hold partial or old weights: they are quarantined.
func (op *operations) UpdateWeights(ctx context.Context, spec UpdateSpec) (_ UpdateOutcome, err error) {
	modelPath, _ := spec.Request["model_path"].(string)
	id := newOpID("update_weights")
	ctx, span := op.cfg.Tracer.Start(ctx, "fleet "+PathUpdateWeights, trace.WithAttributes(attribute.String("diffusion.op", id),
		attribute.String("diffusion.mode", string(spec.Mode)), attribute.String("diffusion.model_path", modelPath)))
	defer endSpan(span, &err)
	release, err := op.lock.try(id)
	if err != nil {
		return UpdateOutcome{}, err
	}
	defer release()
	version := spec.Version
	if version == "" {
		version = op.reg.NextVersion()
	} else {
		op.reg.NoteVersion(version)
	}
	// Requests that name this version (or a minimum it meets) wait for
	// it while the update runs.
	op.reg.BeginUpdate(version)
	defer op.reg.EndUpdate()
	if op.cfg.Pinned != nil {
		defer op.cfg.Pinned.Closing(nil)
	}
	var storeErr error // a change the registry store could not write
	out := UpdateOutcome{Outcome: Outcome{ID: id, Quarantined: []string{}}, Version: version, ModelPath: modelPath, Mode: spec.Mode}
	var targets []registry.Worker
	for _, w := range op.reg.Snapshot().Workers {
		if Broadcasts[PathUpdateWeights].Target(w) {
			targets = append(targets, w)
		}
	}
	if len(targets) == 0 {
		return out, ErrNoTargets
	}
	body, err := json.Marshal(spec.Request)
	if err != nil {
		return out, fmt.Errorf("encode update: %w", err)
	}
	span.SetAttributes(attribute.String("diffusion.weight_version", version), attribute.Int("diffusion.workers", len(targets)))
	log := withTrace(ctx, op.log).WithFields(logrus.Fields{"op": id, "version": version, "model_path": modelPath, "mode": spec.Mode, "workers": len(targets)})
	log.Info("weight update started")
	started := time.Now()
	switch {
	case spec.Mode == ModeDrain:
		batch := max(1, spec.MaxUnavailable)
		for i := 0; i < len(targets) && !out.Rejected; i += batch {
			out.WaitedForPinnedS += op.waitForPinned(ctx, targets[i:min(i+batch, len(targets))], spec.Timeout, log)
			op.updateDrained(ctx, targets[i:min(i+batch, len(targets))], body, version, modelPath, spec.Timeout, &out.Outcome, i == 0, true)
		}
	case op.cfg.HoldInPlace:
		// With the router-owned queue, an in-place update takes the fleet
		// out of rotation without waiting for what the workers run (their
		// queues hold a slot's worth; the update runs after it): new
		// requests wait in the router's queue, not behind the update in a
		// worker, so no answer after the update's 200 comes from the old
		// weights.
		out.WaitedForPinnedS += op.waitForPinned(ctx, targets, spec.Timeout, log)
		op.updateDrained(ctx, targets, body, version, modelPath, spec.Timeout, &out.Outcome, true, false)
	default:
		results := op.workers.callAll(ctx, targets, PathUpdateWeights, body, spec.Timeout)
		if rejectedByAll(results) {
			out.Rejected = true
			for _, r := range results {
				out.add(r, false)
			}
		} else {
			// Every success in one registry change: one store write and one
			// xDS push for the whole fleet, not one per worker.
			var ok []string
			for i, r := range results {
				if r.OK() {
					ok = append(ok, targets[i].Key())
					out.add(r, false)
					continue
				}
				out.add(r, op.settle(targets[i], r, version, modelPath, registry.StateActive))
			}
			if _, err := op.reg.SetWorkersWeights(ok, version, modelPath); err != nil {
				storeErr = err
			}
		}
	}
	if out.Rejected {
		op.cfg.Recorder.WeightUpdate("rejected", time.Since(started))
		log.Warn("every worker rejected the update; nothing changed")
		out.sort()
		op.envoys.waitSynced(ctx, op.reg.Snapshot().Generation)
		return out, nil
	}
	if out.Succeeded > 0 && storeErr == nil {
		if _, err := op.reg.SetFleetWeights(registry.Weights{Version: version, ModelPath: modelPath, Request: spec.Request}); err != nil {
			storeErr = err
		}
	}
	if storeErr != nil {
		// The workers hold what they loaded; the router could not record
		// it and says so rather than answer as if it had.
		out.sort()
		return out, fmt.Errorf("%d workers loaded weights %s, but the router could not record it: %w", out.Succeeded, version, storeErr)
	}
	out.sort()
	op.envoys.waitSynced(ctx, op.reg.Snapshot().Generation)
	outcome := "ok"
	if out.Failed > 0 {
		outcome = "partial"
	}
	op.cfg.Recorder.WeightUpdate(outcome, time.Since(started))
	log.WithFields(logrus.Fields{"failed": out.Failed, "took": time.Since(started).Round(time.Millisecond).String(),
		"waited_for_pinned_s": out.WaitedForPinnedS}).Info("weight update done")
	return out, nil
}

// settle records one worker's update result: the new version on success, a
// quarantine on failure. It reports whether the worker was quarantined.
func (op *operations) settle(w registry.Worker, r CallResult, version, modelPath string, from registry.State) bool {
	if r.OK() {
		if _, err := op.reg.SetWorkerWeights(w.Key(), version, modelPath); err != nil {
			op.log.WithError(err).WithField("worker", w.Key()).Warn("updated worker left the registry")
		}
		if from == registry.StateUpdating {
			_, _, _ = op.states.move(w.Key(), CauseUpdated, "", from)
		}
		return false
	}
	reason := fmt.Sprintf("weight update to version %s (%s) failed: %s", version, modelPath, describe(r))
	cause := CauseUpdateFailed
	if from == registry.StatePending {
		cause = CauseCatchUpFailed
	}
	_, _, err := op.states.move(w.Key(), cause, reason, from)
	return err == nil
}

// updateDrained updates one batch: out of rotation, wait for in-flight
// requests (drain; else only until every Envoy and filter stopped sending
// it new ones), update, back into rotation (and routable) before the next
// batch. When first is set and the whole batch rejects the update alike,
// the workers go back to rotation unchanged and the update stops
// (Rejected).
func (op *operations) updateDrained(ctx context.Context, batch []registry.Worker, body []byte, version, modelPath string, timeout time.Duration, out *Outcome, first, drain bool) {
	if drain {
		// A drain-mode batch: out of rotation, drained, updated, back;
		// its workers' spans are its children.
		var span trace.Span
		ctx, span = op.cfg.Tracer.Start(ctx, "fleet update batch", trace.WithAttributes(attribute.Int("diffusion.workers", len(batch))))
		defer span.End()
	}
	var taken []registry.Worker
	var gen uint64
	for _, w := range batch {
		nw, g, err := op.states.move(w.Key(), CauseUpdateStarted, "weight update to version "+version)
		if err != nil {
			continue // left rotation meanwhile (quarantined, removed)
		}
		taken, gen = append(taken, nw), g
	}
	if !drain {
		sctx, cancel := context.WithTimeout(ctx, timeout)
		if _, err := op.envoys.inForce(sctx, gen); err != nil {
			op.log.WithError(err).Warn("updating without every Envoy's word that it stopped sending the workers new requests")
		}
		cancel()
	}
	var wg sync.WaitGroup
	results := make([]CallResult, len(taken))
	for i, w := range taken {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !drain {
				results[i] = op.workers.call(ctx, w.URL.String(), PathUpdateWeights, body, "application/json", timeout)
				return
			}
			dctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			_, drainSpan := op.cfg.Tracer.Start(dctx, "drain", trace.WithAttributes(attribute.String("diffusion.worker", w.URL.String())))
			idle := op.drains.waitIdle(dctx, w.Key(), gen)
			if !idle {
				traces.Fail(drainSpan, "in-flight requests did not finish in time")
			}
			drainSpan.End()
			if !idle {
				results[i] = CallResult{WorkerURL: w.Key(), StatusCode: 504, Body: map[string]any{
					"error": fmt.Sprintf("in-flight requests did not finish within %s", timeout)}}
				return
			}
			// Its video jobs too: their answers name the weights they were
			// made under, which must not change while they run.
			if done, err := op.workers.waitJobsDone(dctx, w); !done {
				op.log.WithError(err).WithField("worker", w.Key()).Warn("updating a drained worker without its word that its video jobs ended")
			}
			results[i] = op.workers.call(ctx, w.URL.String(), PathUpdateWeights, body, "application/json", timeout)
		}()
	}
	wg.Wait()
	if first && rejectedByAll(results) {
		out.Rejected = true
		for i, r := range results {
			_, _, _ = op.states.move(taken[i].Key(), CauseUpdateRejected, "")
			out.add(r, false)
		}
		return
	}
	for i, r := range results {
		out.add(r, op.settle(taken[i], r, version, modelPath, registry.StateUpdating))
	}
	// The next batch leaves rotation only once this one is back.
	for i, w := range taken {
		if results[i].OK() {
			if cur, ok := op.reg.Get(w.Key()); ok {
				op.envoys.waitRoutable(ctx, cur, op.reg.Snapshot().Generation)
			}
		}
	}
}

// catchUp brings a joining worker (state pending) to the fleet's weights
// before it takes traffic. It waits for a running fleet operation to finish,
// so the version it loads is the one the fleet ends up with.
func (op *operations) catchUp(ctx context.Context, w registry.Worker) (registry.Worker, error) {
	release, err := op.lock.wait(ctx, newOpID("catch_up"))
	if err != nil {
		return w, err
	}
	defer release()
	fleet := op.reg.Snapshot().Fleet
	req := fleet.Request
	if req == nil {
		req = map[string]any{"model_path": fleet.ModelPath}
	}
	body, err := json.Marshal(req)
	if err != nil {
		return w, fmt.Errorf("encode catch-up update: %w", err)
	}
	r := op.workers.call(ctx, w.URL.String(), PathUpdateWeights, body, "application/json", op.cfg.WeightUpdateTimeout)
	if !r.OK() {
		op.settle(w, r, fleet.Version, fleet.ModelPath, registry.StatePending)
		cur, ok := op.reg.Get(w.Key())
		if !ok {
			cur = w
		}
		return cur, fmt.Errorf("%w: version %s (%s): %s", ErrCatchUp, fleet.Version, fleet.ModelPath, describe(r))
	}
	// Record the weights but leave the state to the caller (pending -> active).
	if _, err := op.reg.SetWorkerWeights(w.Key(), fleet.Version, fleet.ModelPath); err != nil {
		return w, err
	}
	op.log.WithFields(logrus.Fields{"worker": w.Key(), "version": fleet.Version}).Info("joining worker loaded the fleet's weights")
	cur, ok := op.reg.Get(w.Key())
	if !ok {
		// Removed meanwhile: say so with its name, not a zero worker's.
		return w, fmt.Errorf("catch up %s: %w", w.Key(), registry.ErrNotFound)
	}
	return cur, nil
}
