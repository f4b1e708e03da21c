package fleet

import (
	"context"
	"fmt"

	"github.com/diffrouter/diffusion-router/registry"
	"github.com/sirupsen/logrus"
)

// admission takes workers in: new ones (resolved, probed, caught up with
// the fleet's weights) and ones an operator takes back.
type admission struct {
	reg     *registry.Registry
	log     *logrus.Entry
	states  *states
	workers *workerClient
	envoys  *envoyWatch
	drains  *drainer
	ops     *operations
}

// AdmitResult says what Admit did.
type AdmitResult struct {
	Worker  registry.Worker
	Created bool
	// Revived is true when a draining or quarantined worker became active.
	Revived bool
	Synced  bool
	Envoys  int
	// HealthError is set when the worker's /health did not answer 200 on
	// admission; it is registered all the same.
	HealthError string
	// SameServerAs is set when the URL given names a server already
	// registered under another URL: Worker is that registration.
	SameServerAs string
}

// Admit registers a worker (idempotent) and waits, bounded, until every
// connected Envoy can route to it. A draining worker is taken back at once;
// a quarantined one only after its /health answers 200.
func (ad *admission) Admit(ctx context.Context, raw string) (AdmitResult, error) {
	u, err := registry.ParseWorkerURL(raw)
	if err != nil {
		return AdmitResult{}, err
	}
	if w, ok := ad.reg.Get(u.String()); ok {
		return ad.readmit(ctx, w)
	}
	addr, err := ad.workers.resolveAddr(ctx, u)
	if err != nil {
		return AdmitResult{}, err
	}
	// One server is one worker, however its URL is spelled: two entries
	// would split its load count and send it every fleet-wide call twice.
	if w, ok := ad.reg.FindServer(u.Scheme, addr, u.Port); ok {
		return ad.sameServer(ctx, u, w)
	}
	// Like the Python routers, a worker that does not answer yet is still
	// registered (it may be loading its model); Envoy's health checks keep
	// traffic away until it does.
	healthErr := ad.workers.checkHealth(ctx, u)
	caps := registry.Capabilities{}
	if healthErr == nil {
		caps = ad.workers.probeCapabilities(ctx, u)
	}
	fleet := ad.reg.Snapshot().Fleet
	state, reason := registry.StateActive, ""
	if fleet.Version != "" {
		// A joiner takes traffic only once it holds the fleet's weights.
		state, reason = registry.StatePending, "loading the fleet's weights (version "+fleet.Version+")"
	}
	res, err := ad.reg.Add(u, addr, caps, state, reason)
	if err != nil {
		return AdmitResult{}, err
	}
	if res.SameServer {
		return ad.sameServer(ctx, u, res.Worker) // registered meanwhile
	}
	if res.Created && state == registry.StatePending {
		w, err := ad.ops.catchUp(ctx, res.Worker)
		if err != nil {
			return AdmitResult{Worker: w, Created: true}, err
		}
		if w, res.Generation, err = ad.states.move(w.Key(), CauseCaughtUp, ""); err != nil {
			return AdmitResult{Worker: w, Created: true}, err
		}
		res.Worker = w
	}
	out := AdmitResult{Worker: res.Worker, Created: res.Created}
	if healthErr != nil {
		out.HealthError = healthErr.Error()
	}
	if res.Created {
		cause := CauseAdded
		if state == registry.StatePending {
			cause = CauseJoining
		}
		ad.states.record(u.String(), StateNew, state, cause, reason)
		ad.log.WithFields(logrus.Fields{"worker": u.String(), "address": addr, "task_types": caps.TaskTypes,
			"health": out.HealthError}).Debug("worker added")
	}
	if healthErr != nil {
		out.Envoys, out.Synced = ad.envoys.waitSynced(ctx, res.Generation)
	} else {
		out.Envoys, out.Synced = ad.envoys.waitRoutable(ctx, res.Worker, res.Generation)
	}
	return out, nil
}

// sameServer answers an add of a new spelling of a registered worker's
// URL as an add of that worker.
func (ad *admission) sameServer(ctx context.Context, u registry.WorkerURL, w registry.Worker) (AdmitResult, error) {
	ad.log.WithFields(logrus.Fields{"url": u.String(), "worker": w.Key()}).Info("add of a worker already registered under another url")
	res, err := ad.readmit(ctx, w)
	res.SameServerAs = w.Key()
	return res, err
}

// RefreshCapabilities reads the worker's /v1/models again and records what
// changed: the server behind a URL may have been replaced (another model,
// another task type). A worker that does not answer keeps what was known.
func (ad *admission) RefreshCapabilities(ctx context.Context, key string) (registry.Worker, error) {
	w, ok := ad.reg.Get(key)
	if !ok {
		return w, fmt.Errorf("refresh %s: %w", key, registry.ErrNotFound)
	}
	caps := ad.workers.probeCapabilities(ctx, w.URL)
	if !caps.Known || registry.CapsEqual(w.Caps, caps) {
		return w, nil
	}
	if _, err := ad.reg.SetCapabilities(key, caps); err != nil {
		return w, err
	}
	log := ad.log.WithFields(logrus.Fields{"worker": key, "task_types": caps.TaskTypes, "models": caps.ModelIDs})
	if w.Caps.Known {
		log.WithFields(logrus.Fields{"were_task_types": w.Caps.TaskTypes, "were_models": w.Caps.ModelIDs}).Warn("worker capabilities changed")
	} else {
		log.Info("worker capabilities learned")
	}
	nw, _ := ad.reg.Get(key)
	return nw, nil
}

func (ad *admission) readmit(ctx context.Context, w registry.Worker) (AdmitResult, error) {
	// Admission always reads /v1/models again, so a replaced server is
	// routed (and caught up) as what it is now.
	if nw, err := ad.RefreshCapabilities(ctx, w.Key()); err == nil {
		w = nw
	}
	switch w.State {
	case registry.StateActive, registry.StatePending:
		return AdmitResult{Worker: w, Synced: true}, nil
	case registry.StateQuarantined:
		if err := ad.workers.checkHealth(ctx, w.URL); err != nil {
			return AdmitResult{Worker: w}, fmt.Errorf("re-admit %s (quarantined: %s): %w", w.Key(), w.Reason, err)
		}
	}
	ad.drains.cancel(w.Key())
	fleet := ad.reg.Snapshot().Fleet
	// A quarantined worker may have restarted with any weights: it always
	// reloads the fleet's before it serves again.
	if fleet.Version != "" && (w.State == registry.StateQuarantined || w.WeightVersion != fleet.Version) {
		pw, _, err := ad.states.move(w.Key(), CauseCatchUp, "loading the fleet's weights (version "+fleet.Version+")", w.State)
		if err != nil {
			return AdmitResult{Worker: pw}, err
		}
		if cw, err := ad.ops.catchUp(ctx, pw); err != nil {
			return AdmitResult{Worker: cw}, err
		}
		w.State = registry.StatePending
	}
	cause := CauseReadmitted
	if w.State == registry.StatePending {
		cause = CauseCaughtUp
	}
	nw, gen, err := ad.states.move(w.Key(), cause, "", w.State)
	if err != nil {
		return AdmitResult{Worker: nw}, err
	}
	out := AdmitResult{Worker: nw, Revived: true}
	out.Envoys, out.Synced = ad.envoys.waitRoutable(ctx, nw, gen)
	return out, nil
}
