package fleet

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/wire"
	"github.com/sirupsen/logrus"
)

// envoyWatch is what the connected Envoys see of the workers: their loads
// and health flags (read at the observe interval), whether a change is in
// force everywhere, and whether a worker is routable. An ejection it
// confirms quarantines the worker.
type envoyWatch struct {
	reg    *registry.Registry
	cfg    Config
	log    *logrus.Entry
	states *states
	syncer Syncer
	admin  EnvoyView

	mu   sync.Mutex
	load map[string]Load // worker key -> what Envoys see
	// confirmed holds workers that a routability check found healthy in
	// every Envoy since the last observation that listed them.
	confirmed map[string]bool
	// lastReports is the previous observation's view per (node, host);
	// only the observe loop uses it.
	lastReports map[[2]string]hostReport
	// disputed are the workers whose ejection the last observation did not
	// confirm (logged once per dispute); observe loop only.
	disputed map[string]bool
}

// Loads returns what the Envoys last reported, by worker key.
func (ew *envoyWatch) Loads() map[string]Load {
	ew.mu.Lock()
	defer ew.mu.Unlock()
	out := make(map[string]Load, len(ew.load)+len(ew.confirmed))
	for k, v := range ew.load {
		out[k] = v
	}
	for k := range ew.confirmed {
		l := out[k]
		l.Seen = true
		out[k] = l
	}
	return out
}

// Observable reports whether any connected Envoy's admin interface can be
// read: only then does Load.Seen say anything.
func (ew *envoyWatch) Observable() bool {
	for _, n := range ew.syncer.Nodes() {
		if n.AdminAddress != "" {
			return true
		}
	}
	return false
}

// Observe reads every connected Envoy's admin /clusters at the observe
// interval until ctx ends. It is the one way Envoy's view (in-flight requests,
// health flags) flows back into the control plane.
func (ew *envoyWatch) Observe(ctx context.Context) {
	t := time.NewTicker(ew.cfg.ObserveInterval)
	defer t.Stop()
	for {
		ew.observeOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (ew *envoyWatch) observeOnce(ctx context.Context) {
	byHost := map[string]Load{}
	var reports []hostReport
	for _, n := range ew.syncer.Nodes() {
		if n.AdminAddress == "" {
			continue
		}
		hosts, err := ew.admin.Clusters(ctx, n.AdminAddress)
		if err != nil {
			ew.log.WithError(err).WithField("node", n.ID).Debug("cannot read Envoy admin")
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
	verdicts := judgeEjections(reports, ew.lastReports)
	ew.lastReports = reportIndex(reports)
	disputed := map[string]bool{}
	out := map[string]Load{}
	for _, w := range ew.reg.Snapshot().Workers {
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
			if !ew.disputed[w.Key()] {
				ew.log.WithFields(logrus.Fields{"worker": w.Key(), "ejected_by": v.ejectors, "serving_on": v.vouchers}).
					Warn("ejection not confirmed: other Envoys serve this worker without errors; not quarantined")
			}
			continue
		}
		// An ejection by any Envoy takes the worker out of every Envoy,
		// for good: Envoy would let it back after the ejection time.
		reason := fmt.Sprintf("ejected by Envoy outlier detection (%d failed requests in a row) on %v", ew.cfg.OutlierFailures, v.ejectors)
		_, _, _ = ew.states.move(w.Key(), CauseEjected, reason)
	}
	ew.disputed = disputed
	ew.mu.Lock()
	ew.load = out
	for k := range ew.confirmed {
		if _, listed := out[k]; listed {
			delete(ew.confirmed, k) // Envoy's own word from now on
		}
	}
	ew.mu.Unlock()
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

func (ew *envoyWatch) waitSynced(ctx context.Context, gen uint64) (int, bool) {
	ctx, cancel := context.WithTimeout(ctx, ew.cfg.SyncTimeout)
	defer cancel()
	n, err := ew.inForce(ctx, gen)
	if err != nil {
		ew.log.WithError(err).Warn("Envoys did not confirm the change in time")
		return n, false
	}
	return n, true
}

// inForce waits until every Envoy has acknowledged generation gen and,
// with least-work routing, every filter that picks workers itself has it
// too: only then does the change steer requests.
func (ew *envoyWatch) inForce(ctx context.Context, gen uint64) (int, error) {
	n, err := ew.syncer.WaitSynced(ctx, gen)
	if err != nil {
		return n, err
	}
	if ew.cfg.Pickers != nil {
		if err := ew.cfg.Pickers.WaitSeen(ctx, gen); err != nil {
			return n, fmt.Errorf("the Envoys' filters: %w", err)
		}
	}
	return n, nil
}

// waitRoutable waits until every Envoy has the change and reports the worker
// as a healthy host. Envoy holds a new host back until its first active
// health check passes, so "config acknowledged" alone is not "routable".
func (ew *envoyWatch) waitRoutable(ctx context.Context, w registry.Worker, gen uint64) (int, bool) {
	n, ok := ew.waitSynced(ctx, gen)
	if !ok || n == 0 {
		return n, ok
	}
	ctx, cancel := context.WithTimeout(ctx, ew.cfg.SyncTimeout)
	defer cancel()
	for {
		if ew.routableEverywhere(ctx, w) {
			ew.mu.Lock()
			ew.confirmed[w.Key()] = true
			ew.mu.Unlock()
			return n, true
		}
		select {
		case <-ctx.Done():
			ew.log.WithField("worker", w.Key()).Warn("Envoys did not report the worker healthy in time (is its /health answering?)")
			return n, false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (ew *envoyWatch) routableEverywhere(ctx context.Context, w registry.Worker) bool {
	addr := net.JoinHostPort(w.Address, strconv.Itoa(int(w.URL.Port)))
	for _, node := range ew.syncer.Nodes() {
		if node.AdminAddress == "" {
			continue // cannot tell; the ACK has to do
		}
		healthy, _, found, err := ew.admin.EndpointStats(ctx, node.AdminAddress, wire.ClusterWorkers, addr)
		if err != nil || !found || !healthy {
			return false
		}
	}
	return true
}

// inFlight sums a host's active requests over every Envoy, plus the
// requests each Envoy holds pending for a connection in the workers
// cluster: Envoy picks the host of a pending request before the request
// counts in the host's active requests, so a request picked just before the
// host left rotation would otherwise reach it after the drain "ended" (seen
// once under load: an answer from updated weights under the old version's
// header). An Envoy whose admin interface cannot be read counts as busy,
// so a drain never ends on a guess.
func (ew *envoyWatch) inFlight(ctx context.Context, addr string) uint64 {
	var total uint64
	for _, n := range ew.syncer.Nodes() {
		if n.AdminAddress == "" {
			return 1
		}
		_, active, _, err := ew.admin.EndpointStats(ctx, n.AdminAddress, wire.ClusterWorkers, addr)
		if err != nil {
			return 1
		}
		pending, err := ew.admin.PendingRequests(ctx, n.AdminAddress, wire.ClusterWorkers)
		if err != nil {
			return 1
		}
		total += active + pending
	}
	return total
}
