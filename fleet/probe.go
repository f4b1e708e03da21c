package fleet

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/wire"
	"github.com/sirupsen/logrus"
)

// prober is the control plane's own /health probes of active workers.
type prober struct {
	reg       *registry.Registry
	cfg       Config
	log       *logrus.Entry
	states    *states
	workers   *workerClient
	admission *admission
}

// Probe checks every active worker's /health at the health-check interval
// until ctx ends. FailureThreshold failures in a row quarantine the worker;
// nothing un-quarantines it but an operator. Workers that have not answered
// yet are probed apart, about once a second (probeStarting).
func (pr *prober) run(ctx context.Context) {
	if pr.cfg.HealthInterval <= 0 {
		return
	}
	t := time.NewTicker(pr.cfg.HealthInterval)
	defer t.Stop()
	// Workers that have not answered yet (registered before their server
	// listens) are looked at about once a second, whatever the interval,
	// so they are known (task types, models) as soon as they come up.
	fast := time.NewTicker(min(pr.cfg.HealthInterval, wire.RecheckInterval))
	defer fast.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			pr.probeOnce(ctx)
		case <-fast.C:
			pr.probeStarting(ctx)
		}
	}
}

// starting reports whether a worker has never answered /v1/models: it is
// taken to be starting up, so failed probes do not count against it (it
// gets no traffic either: Envoy's own checks keep it out).
func starting(w registry.Worker) bool { return w.State == registry.StateActive && !w.Caps.Known }

// probeStarting reads the capabilities of starting workers that answer now.
func (pr *prober) probeStarting(ctx context.Context) {
	pr.probeEach(ctx, starting, func(ctx context.Context, w registry.Worker) {
		if pr.workers.checkHealth(ctx, w.URL) != nil {
			return
		}
		if nw, err := pr.admission.RefreshCapabilities(ctx, w.Key()); err == nil && nw.Caps.Known {
			pr.log.WithField("worker", w.Key()).Info("worker is up")
		}
	})
}

func (pr *prober) probeOnce(ctx context.Context) {
	pr.probeEach(ctx, func(w registry.Worker) bool { return w.State == registry.StateActive && !starting(w) }, pr.probeWorker)
}

// probeEach runs probe on the workers want selects, 64 at a time: a worker
// that does not answer costs its probe timeout, not everyone's.
func (pr *prober) probeEach(ctx context.Context, want func(registry.Worker) bool, probe func(context.Context, registry.Worker)) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, w := range pr.reg.Snapshot().Workers {
		if !want(w) {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(w registry.Worker) {
			defer wg.Done()
			defer func() { <-sem }()
			probe(ctx, w)
		}(w)
	}
	wg.Wait()
}

func (pr *prober) probeWorker(ctx context.Context, w registry.Worker) {
	err := pr.workers.checkHealth(ctx, w.URL)
	if ctx.Err() != nil {
		return
	}
	pr.cfg.Recorder.Probe(err == nil)
	n, rerr := pr.reg.RecordProbe(w.Key(), err == nil)
	if rerr != nil {
		return // removed meanwhile
	}
	log := pr.log.WithField("worker", w.Key())
	if err != nil {
		log.WithError(err).WithField("consecutive_failures", n).Warn("health probe failed")
		if pr.cfg.FailureThreshold > 0 && n >= pr.cfg.FailureThreshold {
			_, _, _ = pr.states.move(w.Key(), CauseProbeFailed, fmt.Sprintf("health check failed %d times in a row: %v", n, err))
		}
		return
	}
}
