package fleet

import (
	"fmt"
	"slices"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/registry"
)

// states is the lifecycle table at work: the one writer of a worker's
// state. Every other part asks it to move a worker.
type states struct {
	reg *registry.Registry
	rec Recorder
	log *logrus.Entry
}

// Cause is why a worker changes state. The set is closed: every state change
// in the router is one of these, made through Manager.move (or, for the
// two changes that add or delete a registry entry, checked and recorded
// through Manager.record).
type Cause string

const (
	CauseAdded   Cause = "added"   // a new worker, the fleet has no weight version
	CauseJoining Cause = "joining" // a new worker that first loads the fleet's weights

	CauseCatchUp    Cause = "catch_up"    // re-admitted; loads the fleet's weights first
	CauseCaughtUp   Cause = "caught_up"   // holds the fleet's weights: takes traffic
	CauseReadmitted Cause = "readmitted"  // an operator took it back
	CauseRemoved    Cause = "removed"     // an operator removed it: finishes its requests
	CauseRemovedNow Cause = "removed_now" // removed while Envoy routed nothing to it
	CauseDrained    Cause = "drained"     // its requests finished (or the drain timed out)

	CauseMarkedDead         Cause = "marked_dead"         // an operator said so (is_dead)
	CauseEjected            Cause = "ejected"             // Envoy's outlier detection
	CauseProbeFailed        Cause = "probe_failed"        // the control plane's /health probes
	CauseCallFailed         Cause = "fleet_call_failed"   // a fleet-wide call failed on it
	CauseChecksumMismatch   Cause = "checksum_mismatch"   // its weights differ from the majority's
	CauseRestartInterrupted Cause = "restart_interrupted" // it was loading weights when the control plane restarted
	CauseStalled            Cause = "stalled"             // a request ran past the stall limit on it (a hung GPU answers /health)

	CauseUpdateStarted  Cause = "update_started"  // drain-mode update: out of rotation
	CauseUpdated        Cause = "updated"         // drain-mode update done: back in rotation
	CauseUpdateRejected Cause = "update_rejected" // every worker refused it alike: back unchanged
	CauseUpdateFailed   Cause = "update_failed"   // its weight update failed
	CauseCatchUpFailed  Cause = "catch_up_failed" // loading the fleet's weights failed
)

// Pseudo-states for a worker not (or no longer) in the registry.
const (
	StateNew  registry.State = "new"
	StateGone registry.State = "removed"
)

type rule struct {
	from []registry.State
	to   registry.State
	// level is how loud the change is logged.
	level logrus.Level
}

var (
	active      = registry.StateActive
	pending     = registry.StatePending
	draining    = registry.StateDraining
	updating    = registry.StateUpdating
	quarantined = registry.StateQuarantined
)

// lifecycle is every legal transition: for each cause, the states it may
// leave and the state it enters.
var lifecycle = map[Cause]rule{
	CauseAdded:   {[]registry.State{StateNew}, active, logrus.InfoLevel},
	CauseJoining: {[]registry.State{StateNew}, pending, logrus.InfoLevel},

	CauseCatchUp:    {[]registry.State{quarantined, draining}, pending, logrus.InfoLevel},
	CauseCaughtUp:   {[]registry.State{pending}, active, logrus.InfoLevel},
	CauseReadmitted: {[]registry.State{quarantined, draining}, active, logrus.InfoLevel},
	CauseRemoved:    {[]registry.State{active, updating}, draining, logrus.InfoLevel},
	CauseRemovedNow: {[]registry.State{active, pending, quarantined}, StateGone, logrus.InfoLevel},
	CauseDrained:    {[]registry.State{draining}, StateGone, logrus.InfoLevel},

	CauseMarkedDead:         {[]registry.State{active, pending, updating, quarantined}, quarantined, logrus.WarnLevel},
	CauseEjected:            {[]registry.State{active}, quarantined, logrus.ErrorLevel},
	CauseProbeFailed:        {[]registry.State{active}, quarantined, logrus.ErrorLevel},
	CauseCallFailed:         {[]registry.State{active}, quarantined, logrus.ErrorLevel},
	CauseChecksumMismatch:   {[]registry.State{active, pending, updating, quarantined}, quarantined, logrus.ErrorLevel},
	CauseRestartInterrupted: {[]registry.State{updating, pending}, quarantined, logrus.WarnLevel},
	CauseStalled:            {[]registry.State{active}, quarantined, logrus.ErrorLevel},

	CauseUpdateStarted:  {[]registry.State{active}, updating, logrus.DebugLevel},
	CauseUpdated:        {[]registry.State{updating}, active, logrus.DebugLevel},
	CauseUpdateRejected: {[]registry.State{updating}, active, logrus.InfoLevel},
	CauseUpdateFailed:   {[]registry.State{active, updating}, quarantined, logrus.ErrorLevel},
	CauseCatchUpFailed:  {[]registry.State{pending}, quarantined, logrus.ErrorLevel},
}

// Next is the state a worker in from enters for cause, or an error when the
// transition is not legal.
func Next(from registry.State, cause Cause) (registry.State, error) {
	r, ok := lifecycle[cause]
	if !ok {
		return "", fmt.Errorf("unknown cause %q", cause)
	}
	if !slices.Contains(r.from, from) {
		return "", fmt.Errorf("%s: a %s worker cannot change state for this cause (from %v only)", cause, from, r.from)
	}
	return r.to, nil
}

// move changes a worker's state for cause: legal only from the states the
// cause allows (narrowed to expect when given, for callers that act on a
// state they read), written to the registry, logged once and counted.
// detail is the human reason the registry keeps.
func (st *states) move(key string, cause Cause, detail string, expect ...registry.State) (registry.Worker, uint64, error) {
	r, ok := lifecycle[cause]
	if !ok {
		return registry.Worker{}, 0, fmt.Errorf("move %s: unknown cause %q", key, cause)
	}
	from := r.from
	if len(expect) > 0 {
		from = nil
		for _, s := range expect {
			if slices.Contains(r.from, s) {
				from = append(from, s)
			}
		}
		if len(from) == 0 {
			return registry.Worker{}, 0, fmt.Errorf("move %s: %s is not legal from %v: %w", key, cause, expect, registry.ErrConflict)
		}
	}
	prev, w, gen, err := st.reg.Move(key, r.to, detail, from...)
	if err != nil {
		return w, gen, err
	}
	if prev != r.to {
		st.record(key, prev, r.to, cause, detail)
	}
	return w, gen, nil
}

// record logs and counts a transition; Admit and the removals use it
// directly, as they add or delete the registry entry instead of moving it.
func (st *states) record(key string, from, to registry.State, cause Cause, detail string) {
	level := logrus.InfoLevel
	if r, ok := lifecycle[cause]; ok {
		level = r.level
	}
	fields := logrus.Fields{"worker": key, "from": from, "to": to, "cause": cause}
	if detail != "" {
		fields["reason"] = detail
	}
	st.log.WithFields(fields).Log(level, "worker "+string(to))
	st.rec.Transition(string(from), string(to), string(cause))
}
