// Package fleet carries out operations on workers that need I/O: admitting a
// worker (resolving it, reading its capabilities), draining it, probing its
// health, and reading what every connected Envoy observes about it. State
// itself lives in the registry; this package is the only one that changes it.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/envoyadmin"
	"github.com/diffrouter/diffusion-router/registry"
)

// Syncer is the xDS side as the fleet sees it.
type Syncer interface {
	WaitSynced(ctx context.Context, gen uint64) (int, error)
	Nodes() []envoyadmin.Node
}

// EnvoyView reads what one Envoy sees of the workers, from the admin
// interface a node's metadata names (envoyadmin.AdminClient). Drains, ejections
// and routability checks read Envoy only through it.
type EnvoyView interface {
	// Clusters lists every host of every cluster with its counters and
	// health flags.
	Clusters(ctx context.Context, admin string) ([]envoyadmin.HostStats, error)
	// EndpointStats is one host of one cluster: whether Envoy routes to it
	// and its requests in flight.
	EndpointStats(ctx context.Context, admin, cluster, address string) (healthy bool, rqActive uint64, found bool, err error)
	// PendingRequests is how many requests of a cluster wait for a
	// connection (their host already picked).
	PendingRequests(ctx context.Context, admin, cluster string) (uint64, error)
}

// Config tunes the fleet operations.
type Config struct {
	// ProbeTimeout bounds one request to a worker's /health or /v1/models.
	ProbeTimeout time.Duration
	// HealthInterval and FailureThreshold drive the control plane's own
	// /health probes: that many failures in a row quarantine a worker.
	HealthInterval   time.Duration
	FailureThreshold int
	// DrainTimeout bounds how long a removed worker may finish its requests.
	DrainTimeout time.Duration
	// SyncTimeout bounds how long an API call waits for Envoys to apply it.
	SyncTimeout time.Duration
	// ObserveInterval is how often Envoy admin stats are read.
	ObserveInterval time.Duration
	// OutlierFailures is Envoy's ejection threshold, named in reasons.
	OutlierFailures int
	// WeightUpdateTimeout bounds one worker's weight update.
	WeightUpdateTimeout time.Duration
	// Recorder, if set, is told about probes and weight updates (metrics).
	Recorder Recorder
	// Resolve, if set, replaces DNS lookups of worker hostnames (tests).
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	// Envoys, if set, replaces the Envoy admin client (tests).
	Envoys EnvoyView
	// HoldInPlace takes an in-place weight update's workers out of
	// rotation while they load (the router-owned queue holds what
	// arrives meanwhile), instead of leaving requests to queue behind the
	// update inside the workers.
	HoldInPlace bool
	// Pinned, if set, counts the requests waiting that only one weight
	// version will serve (pinned to it, or of a group on it): an update
	// does not take the last workers holding a version while some wait
	// for it, within its per-worker timeout (the router-owned queue).
	Pinned interface {
		WaitingFor(version string) int
		// Closing names the versions the update is about to take away
		// (nil: none), so that no new group starts on them.
		Closing(versions []string)
	}
	// Pickers, if set, are the filters that pick workers themselves
	// (least-work routing): a drain also waits until they have all seen
	// the worker leave rotation, since Envoy's endpoint update alone does
	// not stop a filter's pick.
	Pickers Pickers
	// Tracer, if set, records fleet-wide calls, each worker's part of them
	// and drains as spans (package traces); the calls carry the trace to
	// the workers.
	Tracer trace.Tracer
}

// Pickers tells when every filter that picks workers has seen a registry
// generation (loadboard.Board).
type Pickers interface {
	WaitSeen(ctx context.Context, gen uint64) error
}

// Recorder receives the outcomes the control plane's metrics count.
type Recorder interface {
	Probe(ok bool)
	WeightUpdate(outcome string, took time.Duration)
	// Transition counts a worker's state change (see lifecycle).
	Transition(from, to, cause string)
}

type noRecorder struct{}

func (noRecorder) Probe(bool)                         {}
func (noRecorder) WeightUpdate(string, time.Duration) {}
func (noRecorder) Transition(string, string, string)  {}

// Manager is the fleet as the API and the router see it. It holds no state
// of its own: each concern below keeps its own, and the lifecycle table
// (states) is the one writer of a worker's state.
type Manager struct {
	reg       *registry.Registry
	states    *states
	workers   *workerClient
	envoys    *envoyWatch
	drains    *drainer
	probes    *prober
	ops       *operations
	admission *admission
}

// Load is what the connected Envoys report about one worker, summed.
type Load struct {
	ActiveRequests uint64 `json:"active_requests"`
	Requests       uint64 `json:"requests"`
	Errors         uint64 `json:"errors"`
	// FailingHealthChecks is true when any Envoy's active health check fails.
	FailingHealthChecks bool `json:"failing_health_checks"`
	// Ejected is true when any Envoy's outlier detection ejected it.
	Ejected bool `json:"ejected"`
	// Seen is true once an Envoy listed the worker as healthy or a
	// routability check confirmed it: until then Envoy does not route to a
	// new worker, whatever the registry says.
	Seen bool `json:"-"`
}

// NewManager wires a manager. ctx bounds the background work it starts.
func NewManager(ctx context.Context, reg *registry.Registry, syncer Syncer, cfg Config, log *logrus.Entry) *Manager {
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = 5 * time.Second
	}
	if cfg.SyncTimeout <= 0 {
		cfg.SyncTimeout = 5 * time.Second
	}
	if cfg.ObserveInterval <= 0 {
		cfg.ObserveInterval = time.Second
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 10 * time.Minute
	}
	if cfg.Recorder == nil {
		cfg.Recorder = noRecorder{}
	}
	if cfg.Resolve == nil {
		cfg.Resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	if cfg.WeightUpdateTimeout <= 0 {
		cfg.WeightUpdateTimeout = 10 * time.Minute
	}
	if cfg.Envoys == nil {
		cfg.Envoys = envoyadmin.NewAdminClient()
	}
	if cfg.Tracer == nil {
		cfg.Tracer = noop.NewTracerProvider().Tracer("")
	}
	st := &states{reg: reg, rec: cfg.Recorder, log: log}
	wc := &workerClient{
		cfg: cfg, log: log, resolve: cfg.Resolve,
		// No redirects: a worker's answer is taken as it is.
		client: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
	}
	ew := &envoyWatch{reg: reg, cfg: cfg, log: log, states: st, syncer: syncer, admin: cfg.Envoys,
		load: map[string]Load{}, confirmed: map[string]bool{}}
	dr := &drainer{reg: reg, cfg: cfg, states: st, envoys: ew, running: map[string]*drain{}, baseCtx: ctx}
	m := &Manager{reg: reg, states: st, workers: wc, envoys: ew, drains: dr}
	m.ops = &operations{reg: reg, cfg: cfg, log: log, states: st, workers: wc, envoys: ew, drains: dr, quarantine: m.Quarantine}
	m.admission = &admission{reg: reg, log: log, states: st, workers: wc, envoys: ew, drains: dr, ops: m.ops}
	m.probes = &prober{reg: reg, cfg: cfg, log: log, states: st, workers: wc, admission: m.admission}
	return m
}

// Registry is the registry, to read: only the fleet changes it.
func (m *Manager) Registry() registry.View { return m.reg }

// Wait blocks until background drains have finished.
func (m *Manager) Wait() { m.drains.wait() }

// Admit registers a worker (see admission.Admit).
func (m *Manager) Admit(ctx context.Context, raw string) (AdmitResult, error) {
	return m.admission.Admit(ctx, raw)
}

// RefreshCapabilities reads a worker's /v1/models again (see
// admission.RefreshCapabilities).
func (m *Manager) RefreshCapabilities(ctx context.Context, key string) (registry.Worker, error) {
	return m.admission.RefreshCapabilities(ctx, key)
}

// SetSlots sets how many requests the router-owned queue lets a worker run
// at once, and returns the worker as it is now.
func (m *Manager) SetSlots(key string, slots int) (registry.Worker, error) {
	if _, err := m.reg.SetSlots(key, slots); err != nil {
		return registry.Worker{}, fmt.Errorf("set slots of %s: %w", key, err)
	}
	w, ok := m.reg.Get(key)
	if !ok {
		return w, fmt.Errorf("set slots of %s: %w", key, registry.ErrNotFound)
	}
	return w, nil
}

// CheckHealth asks a worker's /health once.
func (m *Manager) CheckHealth(ctx context.Context, u registry.WorkerURL) error {
	return m.workers.checkHealth(ctx, u)
}

// Loads returns what the Envoys last reported, by worker key.
func (m *Manager) Loads() map[string]Load { return m.envoys.Loads() }

// OutByEnvoy reports, from the last observation, the workers some Envoy
// fails health checks on or ejected: they leave the filters' views (and
// the queue's) at once, before the fleet quarantines them.
func (m *Manager) OutByEnvoy() func(key string) bool {
	loads := m.envoys.Loads()
	return func(key string) bool { l := loads[key]; return l.FailingHealthChecks || l.Ejected }
}

// Observable reports whether any connected Envoy's admin interface can be
// read: only then does Load.Seen say anything.
func (m *Manager) Observable() bool { return m.envoys.Observable() }

// Observe reads the Envoys' view until ctx ends (see envoyWatch.Observe).
func (m *Manager) Observe(ctx context.Context) { m.envoys.Observe(ctx) }

// Probe runs the control plane's health probes until ctx ends (see
// prober.run).
func (m *Manager) Probe(ctx context.Context) { m.probes.run(ctx) }

// Running returns the id of the fleet operation in progress, if any.
func (m *Manager) Running() string { return m.ops.Running() }

// Call runs a fleet-wide call (see operations.Call).
func (m *Manager) Call(ctx context.Context, spec CallSpec) (Outcome, error) {
	return m.ops.Call(ctx, spec)
}

// RunBroadcast runs a fleet-wide call by path (see operations.RunBroadcast).
func (m *Manager) RunBroadcast(ctx context.Context, path string, body []byte, o BroadcastOptions) (BroadcastResult, error) {
	return m.ops.RunBroadcast(ctx, path, body, o)
}

// UpdateWeights switches the fleet to new weights (see
// operations.UpdateWeights).
func (m *Manager) UpdateWeights(ctx context.Context, spec UpdateSpec) (UpdateOutcome, error) {
	return m.ops.UpdateWeights(ctx, spec)
}

// ResumeAfterRestart finishes what a previous control plane left half done:
// drains go on; a worker caught in the middle of loading weights holds
// weights nobody knows, so it is quarantined.
func (m *Manager) ResumeAfterRestart(ctx context.Context) {
	for _, w := range m.reg.Snapshot().Workers {
		switch w.State {
		case registry.StateDraining:
			m.drains.start(ctx, w.Key(), m.reg.Snapshot().Generation)
		case registry.StateUpdating, registry.StatePending:
			_, _, _ = m.states.move(w.Key(), CauseRestartInterrupted,
				"interrupted by a control-plane restart while loading weights: its weights are unknown", w.State)
		}
	}
}

// Error kinds the API maps to status codes.
var (
	ErrUnreachable = errors.New("worker unreachable")
	ErrRejected    = errors.New("worker rejected")
)

// Remove starts draining a worker: Envoy stops sending it new requests at
// once, the ones it holds finish, then it leaves the registry. It returns
// when every Envoy stopped routing to it (bounded by the sync timeout).
func (m *Manager) Remove(ctx context.Context, key string) (registry.Worker, bool, error) {
	w, ok := m.reg.Get(key)
	if !ok {
		return registry.Worker{}, false, fmt.Errorf("remove %s: %w", key, registry.ErrNotFound)
	}
	if w.State == registry.StateDraining {
		return w, true, nil
	}
	if !w.InEnvoy() {
		// Nothing can be in flight on a worker Envoy does not know.
		if _, err := Next(w.State, CauseRemovedNow); err != nil {
			return w, false, fmt.Errorf("remove %s: %w", key, err)
		}
		_, err := m.reg.Delete(key, w.State)
		if err == nil {
			m.states.record(key, w.State, StateGone, CauseRemovedNow, "removed by operator")
		}
		w.State = StateGone
		return w, true, err
	}
	nw, gen, err := m.states.move(key, CauseRemoved, "removed by operator", w.State)
	if err != nil {
		return nw, false, err
	}
	_, synced := m.envoys.waitSynced(ctx, gen)
	m.drains.start(ctx, key, gen)
	return nw, synced, nil
}

// Quarantine takes a worker out of rotation until an operator re-admits it.
// A worker being removed (draining) is not quarantined: the operator's
// removal wins, and the worker leaves once its requests finish.
func (m *Manager) Quarantine(ctx context.Context, key string, cause Cause, reason string) (registry.Worker, bool, error) {
	w, gen, err := m.states.move(key, cause, reason)
	if err != nil {
		return w, false, err
	}
	m.drains.cancel(key)
	_, synced := m.envoys.waitSynced(ctx, gen)
	return w, synced, nil
}
