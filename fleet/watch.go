package fleet

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/registry"

	"github.com/diffrouter/diffusion-router/wire"
)

// Loads returns what the Envoys last reported, by worker key.
func (m *Manager) Loads() map[string]Load {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]Load, len(m.load)+len(m.confirmed))
	for k, v := range m.load {
		out[k] = v
	}
	for k := range m.confirmed {
		l := out[k]
		l.Seen = true
		out[k] = l
	}
	return out
}

// Observable reports whether any connected Envoy's admin interface can be
// read: only then does Load.Seen say anything.
func (m *Manager) Observable() bool {
	for _, n := range m.syncer.Nodes() {
		if n.AdminAddress != "" {
			return true
		}
	}
	return false
}

// Observe reads every connected Envoy's admin /clusters at the observe
// interval until ctx ends. It is the one way Envoy's view (in-flight requests,
// health flags) flows back into the control plane.
func (m *Manager) Observe(ctx context.Context) {
	t := time.NewTicker(m.cfg.ObserveInterval)
	defer t.Stop()
	for {
		m.observeOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *Manager) observeOnce(ctx context.Context) {
	byHost := map[string]Load{}
	var reports []hostReport
	for _, n := range m.syncer.Nodes() {
		if n.AdminAddress == "" {
			continue
		}
		hosts, err := m.admin.Clusters(ctx, n.AdminAddress)
		if err != nil {
			m.log.WithError(err).WithField("node", n.ID).Debug("cannot read Envoy admin")
			continue
		}
		for _, h := range hosts {
			if h.Cluster != wire.ClusterWorkers {
				continue
			}
			l := byHost[h.Hostname]
			l.ActiveRequests += h.RqActive
			l.Requests += h.RqTotal
			l.Errors += h.RqError
			l.FailingHealthChecks = l.FailingHealthChecks || h.FailedActiveHC
			l.Ejected = l.Ejected || h.FailedOutlier
			l.Seen = true
			byHost[h.Hostname] = l
			reports = append(reports, hostReport{node: n.ID, host: h.Hostname, ejected: h.FailedOutlier,
				failingHC: h.FailedActiveHC, total: h.RqTotal, errors: h.RqError})
		}
	}
	verdicts := judgeEjections(reports, m.lastReports)
	m.lastReports = reportIndex(reports)
	disputed := map[string]bool{}
	out := map[string]Load{}
	for _, w := range m.reg.Snapshot().Workers {
		hp := hostPort(w.URL)
		if l, ok := byHost[hp]; ok {
			out[w.Key()] = l
		}
		v, ejected := verdicts[hp]
		if !ejected || w.State != registry.StateActive {
			continue
		}
		if len(v.vouchers) > 0 {
			// Another Envoy is sending it requests that succeed: the
			// failures are on the ejecting Envoy's path (or come and go).
			// That Envoy keeps it ejected for a while on its own; the
			// fleet keeps it until the others fail with it too.
			disputed[w.Key()] = true
			if !m.disputed[w.Key()] {
				m.log.WithFields(logrus.Fields{"worker": w.Key(), "ejected_by": v.ejectors, "serving_on": v.vouchers}).
					Warn("ejection not confirmed: other Envoys serve this worker without errors; not quarantined")
			}
			continue
		}
		// An ejection by any Envoy takes the worker out of every Envoy,
		// for good: Envoy would let it back after the ejection time.
		reason := fmt.Sprintf("ejected by Envoy outlier detection (%d failed requests in a row) on %v", m.cfg.OutlierFailures, v.ejectors)
		_, _, _ = m.move(w.Key(), CauseEjected, reason)
	}
	m.disputed = disputed
	m.mu.Lock()
	m.load = out
	for k := range m.confirmed {
		if _, listed := out[k]; listed {
			delete(m.confirmed, k) // Envoy's own word from now on
		}
	}
	m.mu.Unlock()
}

// hostReport is one Envoy's view of one worker in one observation.
type hostReport struct {
	node, host    string
	ejected       bool
	failingHC     bool
	total, errors uint64
}

func reportIndex(rs []hostReport) map[[2]string]hostReport {
	idx := make(map[[2]string]hostReport, len(rs))
	for _, r := range rs {
		idx[[2]string{r.node, r.host}] = r
	}
	return idx
}

// ejectionVerdict says which Envoys ejected a worker and which vouch for it.
type ejectionVerdict struct {
	ejectors, vouchers []string
}

// judgeEjections finds the workers some Envoy ejected, and for each the
// Envoys that vouch for it: ones that do not eject it, see its health
// checks pass, and sent it requests since the previous observation without
// a single error. An Envoy that sent nothing vouches for nothing, so a
// replica without traffic never holds back a real ejection.
func judgeEjections(now []hostReport, prev map[[2]string]hostReport) map[string]ejectionVerdict {
	out := map[string]ejectionVerdict{}
	for _, r := range now {
		if r.ejected {
			v := out[r.host]
			v.ejectors = append(v.ejectors, r.node)
			out[r.host] = v
		}
	}
	for _, r := range now {
		v, ejected := out[r.host]
		if !ejected || r.ejected || r.failingHC {
			continue
		}
		p, seen := prev[[2]string{r.node, r.host}]
		if seen && r.total > p.total && r.errors == p.errors {
			v.vouchers = append(v.vouchers, r.node)
			out[r.host] = v
		}
	}
	return out
}

func hostPort(u registry.WorkerURL) string {
	return net.JoinHostPort(u.Host, strconv.Itoa(int(u.Port)))
}

// Probe checks every active worker's /health at the health-check interval
// until ctx ends. FailureThreshold failures in a row quarantine the worker;
// nothing un-quarantines it but an operator. Workers that have not answered
// yet are probed apart, about once a second (probeStarting).
func (m *Manager) Probe(ctx context.Context) {
	if m.cfg.HealthInterval <= 0 {
		return
	}
	t := time.NewTicker(m.cfg.HealthInterval)
	defer t.Stop()
	// Workers that have not answered yet (registered before their server
	// listens) are looked at about once a second, whatever the interval,
	// so they are known (task types, models) as soon as they come up.
	fast := time.NewTicker(min(m.cfg.HealthInterval, wire.RecheckInterval))
	defer fast.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.probeOnce(ctx)
		case <-fast.C:
			m.probeStarting(ctx)
		}
	}
}

// starting reports whether a worker has never answered /v1/models: it is
// taken to be starting up, so failed probes do not count against it (it
// gets no traffic either: Envoy's own checks keep it out).
func starting(w registry.Worker) bool { return w.State == registry.StateActive && !w.Caps.Known }

// probeStarting reads the capabilities of starting workers that answer now.
func (m *Manager) probeStarting(ctx context.Context) {
	m.probeEach(ctx, starting, func(ctx context.Context, w registry.Worker) {
		if m.CheckHealth(ctx, w.URL) != nil {
			return
		}
		if nw, err := m.RefreshCapabilities(ctx, w.Key()); err == nil && nw.Caps.Known {
			m.log.WithField("worker", w.Key()).Info("worker is up")
		}
	})
}

func (m *Manager) probeOnce(ctx context.Context) {
	m.probeEach(ctx, func(w registry.Worker) bool { return w.State == registry.StateActive && !starting(w) }, m.probeWorker)
}

// probeEach runs probe on the workers want selects, 64 at a time: a worker
// that does not answer costs its probe timeout, not everyone's.
func (m *Manager) probeEach(ctx context.Context, want func(registry.Worker) bool, probe func(context.Context, registry.Worker)) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, w := range m.reg.Snapshot().Workers {
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

func (m *Manager) probeWorker(ctx context.Context, w registry.Worker) {
	err := m.CheckHealth(ctx, w.URL)
	if ctx.Err() != nil {
		return
	}
	m.cfg.Recorder.Probe(err == nil)
	n, rerr := m.reg.RecordProbe(w.Key(), err == nil)
	if rerr != nil {
		return // removed meanwhile
	}
	log := m.log.WithField("worker", w.Key())
	if err != nil {
		log.WithError(err).WithField("consecutive_failures", n).Warn("health probe failed")
		if m.cfg.FailureThreshold > 0 && n >= m.cfg.FailureThreshold {
			_, _, _ = m.move(w.Key(), CauseProbeFailed, fmt.Sprintf("health check failed %d times in a row: %v", n, err))
		}
		return
	}
}

// Quarantine takes a worker out of rotation until an operator re-admits it.
// A worker being removed (draining) is not quarantined: the operator's
// removal wins, and the worker leaves once its requests finish.
func (m *Manager) Quarantine(ctx context.Context, key string, cause Cause, reason string) (registry.Worker, bool, error) {
	w, gen, err := m.move(key, cause, reason)
	if err != nil {
		return w, false, err
	}
	m.cancelDrain(key)
	_, synced := m.waitSynced(ctx, gen)
	return w, synced, nil
}
