package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/diffrouter/diffusion-router/registry"
)

// Broadcast is what the router does for one fleet-wide call: which workers
// it calls, what a success records, whether a failure quarantines, and how
// the answers are summarised. Broadcasts holds them all; adding a broadcast
// endpoint is one entry there, one path in wire.FleetCallPaths and a test.
type Broadcast struct {
	// Weights marks the weight update, which has its own orchestration
	// (modes, batches, catch-up of joiners): UpdateWeights runs it.
	Weights bool
	// Target picks the workers called.
	Target func(registry.Worker) bool
	// Record notes in the registry what a successful call changed.
	Record func(reg *registry.Registry, w registry.Worker) error
	// Quarantine takes workers whose call failed out of rotation: they may
	// hold a state (weights, adapters, memory) that differs from the fleet's.
	Quarantine bool
	// NothingToDo says why a call that found no worker to call is a
	// success all the same (sleeping a sleeping fleet), or "" when it is not.
	NothingToDo func(registry.Snapshot) string
	// Summarise reads the answers into fields of the reply, and names the
	// workers that disagree with the fleet (quarantined for SuspectCause
	// when the caller asks) with the reason why.
	Summarise    func(results []CallResult) (fields map[string]any, suspects []string, reason string)
	SuspectCause Cause
}

// awake and asleep are active workers with their memory held or released.
func awake(w registry.Worker) bool  { return w.State == registry.StateActive && !w.Asleep }
func asleep(w registry.Worker) bool { return w.State == registry.StateActive && w.Asleep }

func recordAsleep(v bool) func(*registry.Registry, registry.Worker) error {
	return func(reg *registry.Registry, w registry.Worker) error {
		_, err := reg.SetAsleep(w.Key(), v)
		return err
	}
}

// PathUpdateWeights is the weight update's path.
const PathUpdateWeights = "/update_weights_from_disk"

// Broadcasts are the fleet-wide calls, by path (wire.FleetCallPaths).
var Broadcasts = map[string]Broadcast{
	// Sleeping workers are updated too: sglang loads weights into a worker
	// whose memory is released.
	PathUpdateWeights: {Weights: true, Target: func(w registry.Worker) bool { return w.State == registry.StateActive }, Quarantine: true},
	"/release_memory_occupation": {Target: awake, Record: recordAsleep(true), Quarantine: true,
		NothingToDo: allAre(asleep, awake, "All workers are already sleeping")},
	"/resume_memory_occupation": {Target: asleep, Record: recordAsleep(false), Quarantine: true,
		NothingToDo: allAre(awake, asleep, "All workers are already active")},
	// Reading a checksum changes nothing; a worker that differs is only
	// quarantined when the operator asked for it.
	"/get_weights_checksum":    {Target: awake, Summarise: checksumMajority, SuspectCause: CauseChecksumMismatch},
	"/v1/set_lora":             {Target: awake, Quarantine: true},
	"/v1/merge_lora_weights":   {Target: awake, Quarantine: true},
	"/v1/unmerge_lora_weights": {Target: awake, Quarantine: true},
}

// allAre answers msg when some active worker is done already and none is
// left to do (a sleep or wake that found nothing to change); with no active
// worker at all, nothing can serve and the call fails.
func allAre(done, todo func(registry.Worker) bool, msg string) func(registry.Snapshot) string {
	return func(snap registry.Snapshot) string {
		d, t := 0, 0
		for _, w := range snap.Workers {
			if done(w) {
				d++
			}
			if todo(w) {
				t++
			}
		}
		if d > 0 && t == 0 {
			return msg
		}
		return ""
	}
}

// checksumMajority finds the checksum most workers report (ties: the
// smallest) and the workers that differ from it.
func checksumMajority(results []CallResult) (map[string]any, []string, string) {
	counts := map[string]int{}
	by := map[string]string{}
	for _, r := range results {
		if m, ok := r.Body.(map[string]any); ok && r.OK() {
			if c, ok := m["checksum"].(string); ok {
				counts[c]++
				by[r.WorkerURL] = c
			}
		}
	}
	majority, best := "", 0
	for c, n := range counts {
		if n > best || (n == best && c < majority) {
			majority, best = c, n
		}
	}
	mismatched := []string{}
	for _, r := range results {
		if c, ok := by[r.WorkerURL]; ok && c != majority {
			mismatched = append(mismatched, r.WorkerURL)
		}
	}
	slices.Sort(mismatched)
	fields := map[string]any{"checksum": majority, "mismatched": mismatched, "consistent": len(mismatched) == 0 && len(by) > 0}
	return fields, mismatched, "weights checksum differs from the fleet's majority (" + majority + ")"
}

// BroadcastOptions are the caller's choices for one broadcast.
type BroadcastOptions struct {
	Timeout time.Duration
	// QuarantineSuspects quarantines the workers Summarise names.
	QuarantineSuspects bool
}

// BroadcastResult is a broadcast's outcome and the summary's fields.
type BroadcastResult struct {
	Outcome
	Fields map[string]any
	// NothingToDo is set when no worker needed the call (a success).
	NothingToDo string
}

// ErrNoBroadcast is returned for a path that is not a fleet-wide call.
var ErrNoBroadcast = errors.New("not a fleet-wide call")

// RunBroadcast runs the fleet-wide call at path (all but the weight
// update, see UpdateWeights).
func (op *operations) RunBroadcast(ctx context.Context, path string, body []byte, o BroadcastOptions) (BroadcastResult, error) {
	b, ok := Broadcasts[path]
	if !ok || b.Weights {
		return BroadcastResult{}, fmt.Errorf("%s: %w", path, ErrNoBroadcast)
	}
	spec := CallSpec{Path: path, Body: body, Target: b.Target, Quarantine: b.Quarantine, Timeout: o.Timeout}
	if b.Record != nil {
		spec.OnSuccess = func(w registry.Worker) error { return b.Record(op.reg, w) }
	}
	out, err := op.Call(ctx, spec)
	if errors.Is(err, ErrNoTargets) && b.NothingToDo != nil {
		if msg := b.NothingToDo(op.reg.Snapshot()); msg != "" {
			return BroadcastResult{Outcome: out, NothingToDo: msg}, nil
		}
	}
	if err != nil {
		return BroadcastResult{Outcome: out}, err
	}
	res := BroadcastResult{Outcome: out}
	if b.Summarise != nil {
		fields, suspects, reason := b.Summarise(out.Results)
		res.Fields = fields
		if o.QuarantineSuspects {
			for _, u := range suspects {
				if _, _, err := op.quarantine(ctx, u, b.SuspectCause, reason); err == nil {
					res.Quarantined = append(res.Quarantined, u)
				}
			}
		}
	}
	return res, nil
}
