// Package fleet carries out operations on workers that need I/O: admitting a
// worker (resolving it, reading its capabilities), draining it, probing its
// health, and reading what every connected Envoy observes about it. State
// itself lives in the registry; this package is the only one that changes it.
package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/envoy"
	"github.com/diffrouter/diffusion-router/registry"
	xdsserver "github.com/diffrouter/diffusion-router/xds/server"

	"github.com/diffrouter/diffusion-router/wire"
)

// Syncer is the xDS side as the fleet sees it.
type Syncer interface {
	WaitSynced(ctx context.Context, gen uint64) (int, error)
	Nodes() []xdsserver.Node
}

// EnvoyView reads what one Envoy sees of the workers, from the admin
// interface a node's metadata names (envoy.AdminClient). Drains, ejections
// and routability checks read Envoy only through it.
type EnvoyView interface {
	// Clusters lists every host of every cluster with its counters and
	// health flags.
	Clusters(ctx context.Context, admin string) ([]envoy.HostStats, error)
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
	// Pickers, if set, are the filters that pick workers themselves
	// (least-work routing): a drain also waits until they have all seen
	// the worker leave rotation, since Envoy's endpoint update alone does
	// not stop a filter's pick.
	Pickers Pickers
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

// Manager performs fleet operations.
type Manager struct {
	reg    *registry.Registry
	syncer Syncer
	cfg    Config
	log    *logrus.Entry
	client *http.Client
	admin  EnvoyView
	// resolve looks a worker hostname up; replaced in tests.
	resolve func(ctx context.Context, host string) ([]netip.Addr, error)

	ops opLock

	mu   sync.Mutex
	load map[string]Load // worker key -> what Envoys see
	// confirmed holds workers that a routability check found healthy in
	// every Envoy since the last observation that listed them.
	confirmed map[string]bool
	drains    map[string]*drain
	// lastReports is the previous observation's view per (node, host);
	// only the observe loop uses it.
	lastReports map[[2]string]hostReport
	// disputed are the workers whose ejection the last observation did not
	// confirm (logged once per dispute); observe loop only.
	disputed map[string]bool
	wg       sync.WaitGroup
	baseCtx  context.Context
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
		cfg.Envoys = envoy.NewAdminClient()
	}
	return &Manager{
		reg: reg, syncer: syncer, cfg: cfg, log: log,
		// No redirects: a worker's answer is taken as it is.
		client:    &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		admin:     cfg.Envoys,
		resolve:   cfg.Resolve,
		load:      map[string]Load{},
		confirmed: map[string]bool{},
		drains:    map[string]*drain{},
		baseCtx:   ctx,
	}
}

// Registry exposes the registry for read access.
func (m *Manager) Registry() *registry.Registry { return m.reg }

// Wait blocks until background drains have finished.
func (m *Manager) Wait() { m.wg.Wait() }

// ResumeAfterRestart finishes what a previous control plane left half done:
// drains go on; a worker caught in the middle of loading weights holds
// weights nobody knows, so it is quarantined.
func (m *Manager) ResumeAfterRestart(ctx context.Context) {
	for _, w := range m.reg.Snapshot().Workers {
		switch w.State {
		case registry.StateDraining:
			m.startDrain(w.Key(), m.reg.Snapshot().Generation)
		case registry.StateUpdating, registry.StatePending:
			_, _, _ = m.move(w.Key(), CauseRestartInterrupted,
				"interrupted by a control-plane restart while loading weights: its weights are unknown", w.State)
		}
	}
}

// Error kinds the API maps to status codes.
var (
	ErrUnreachable = errors.New("worker unreachable")
	ErrRejected    = errors.New("worker rejected")
)

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
func (m *Manager) Admit(ctx context.Context, raw string) (AdmitResult, error) {
	u, err := registry.ParseWorkerURL(raw)
	if err != nil {
		return AdmitResult{}, err
	}
	if w, ok := m.reg.Get(u.String()); ok {
		return m.readmit(ctx, w)
	}
	addr, err := m.resolveAddr(ctx, u)
	if err != nil {
		return AdmitResult{}, err
	}
	// One server is one worker, however its URL is spelled: two entries
	// would split its load count and send it every fleet-wide call twice.
	if w, ok := m.reg.FindServer(u.Scheme, addr, u.Port); ok {
		return m.sameServer(ctx, u, w)
	}
	// Like the Python routers, a worker that does not answer yet is still
	// registered (it may be loading its model); Envoy's health checks keep
	// traffic away until it does.
	healthErr := m.CheckHealth(ctx, u)
	caps := registry.Capabilities{}
	if healthErr == nil {
		caps = m.probeCapabilities(ctx, u)
	}
	fleet := m.reg.Snapshot().Fleet
	state, reason := registry.StateActive, ""
	if fleet.Version != "" {
		// A joiner takes traffic only once it holds the fleet's weights.
		state, reason = registry.StatePending, "loading the fleet's weights (version "+fleet.Version+")"
	}
	res, err := m.reg.Add(u, addr, caps, state, reason)
	if err != nil {
		return AdmitResult{}, err
	}
	if res.SameServer {
		return m.sameServer(ctx, u, res.Worker) // registered meanwhile
	}
	if res.Created && state == registry.StatePending {
		w, err := m.catchUp(ctx, res.Worker)
		if err != nil {
			return AdmitResult{Worker: w, Created: true}, err
		}
		if w, res.Generation, err = m.move(w.Key(), CauseCaughtUp, ""); err != nil {
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
		m.record(u.String(), StateNew, state, cause, reason)
		m.log.WithFields(logrus.Fields{"worker": u.String(), "address": addr, "task_types": caps.TaskTypes,
			"health": out.HealthError}).Debug("worker added")
	}
	if healthErr != nil {
		out.Envoys, out.Synced = m.waitSynced(ctx, res.Generation)
	} else {
		out.Envoys, out.Synced = m.waitRoutable(ctx, res.Worker, res.Generation)
	}
	return out, nil
}

// sameServer answers an add of a new spelling of a registered worker's
// URL as an add of that worker.
func (m *Manager) sameServer(ctx context.Context, u registry.WorkerURL, w registry.Worker) (AdmitResult, error) {
	m.log.WithFields(logrus.Fields{"url": u.String(), "worker": w.Key()}).Info("add of a worker already registered under another url")
	res, err := m.readmit(ctx, w)
	res.SameServerAs = w.Key()
	return res, err
}

// RefreshCapabilities reads the worker's /v1/models again and records what
// changed: the server behind a URL may have been replaced (another model,
// another task type). A worker that does not answer keeps what was known.
func (m *Manager) RefreshCapabilities(ctx context.Context, key string) (registry.Worker, error) {
	w, ok := m.reg.Get(key)
	if !ok {
		return w, fmt.Errorf("refresh %s: %w", key, registry.ErrNotFound)
	}
	caps := m.probeCapabilities(ctx, w.URL)
	if !caps.Known || registry.CapsEqual(w.Caps, caps) {
		return w, nil
	}
	if _, err := m.reg.SetCapabilities(key, caps); err != nil {
		return w, err
	}
	log := m.log.WithFields(logrus.Fields{"worker": key, "task_types": caps.TaskTypes, "models": caps.ModelIDs})
	if w.Caps.Known {
		log.WithFields(logrus.Fields{"were_task_types": w.Caps.TaskTypes, "were_models": w.Caps.ModelIDs}).Warn("worker capabilities changed")
	} else {
		log.Info("worker capabilities learned")
	}
	nw, _ := m.reg.Get(key)
	return nw, nil
}

func (m *Manager) readmit(ctx context.Context, w registry.Worker) (AdmitResult, error) {
	// Admission always reads /v1/models again, so a replaced server is
	// routed (and caught up) as what it is now.
	if nw, err := m.RefreshCapabilities(ctx, w.Key()); err == nil {
		w = nw
	}
	switch w.State {
	case registry.StateActive, registry.StatePending:
		return AdmitResult{Worker: w, Synced: true}, nil
	case registry.StateQuarantined:
		if err := m.CheckHealth(ctx, w.URL); err != nil {
			return AdmitResult{Worker: w}, fmt.Errorf("re-admit %s (quarantined: %s): %w", w.Key(), w.Reason, err)
		}
	}
	m.cancelDrain(w.Key())
	fleet := m.reg.Snapshot().Fleet
	// A quarantined worker may have restarted with any weights: it always
	// reloads the fleet's before it serves again.
	if fleet.Version != "" && (w.State == registry.StateQuarantined || w.WeightVersion != fleet.Version) {
		pw, _, err := m.move(w.Key(), CauseCatchUp, "loading the fleet's weights (version "+fleet.Version+")", w.State)
		if err != nil {
			return AdmitResult{Worker: pw}, err
		}
		if cw, err := m.catchUp(ctx, pw); err != nil {
			return AdmitResult{Worker: cw}, err
		}
		w.State = registry.StatePending
	}
	cause := CauseReadmitted
	if w.State == registry.StatePending {
		cause = CauseCaughtUp
	}
	nw, gen, err := m.move(w.Key(), cause, "", w.State)
	if err != nil {
		return AdmitResult{Worker: nw}, err
	}
	out := AdmitResult{Worker: nw, Revived: true}
	out.Envoys, out.Synced = m.waitRoutable(ctx, nw, gen)
	return out, nil
}

func (m *Manager) waitSynced(ctx context.Context, gen uint64) (int, bool) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.SyncTimeout)
	defer cancel()
	n, err := m.inForce(ctx, gen)
	if err != nil {
		m.log.WithError(err).Warn("Envoys did not confirm the change in time")
		return n, false
	}
	return n, true
}

// inForce waits until every Envoy has acknowledged generation gen and,
// with least-work routing, every filter that picks workers itself has it
// too: only then does the change steer requests.
func (m *Manager) inForce(ctx context.Context, gen uint64) (int, error) {
	n, err := m.syncer.WaitSynced(ctx, gen)
	if err != nil {
		return n, err
	}
	if m.cfg.Pickers != nil {
		if err := m.cfg.Pickers.WaitSeen(ctx, gen); err != nil {
			return n, fmt.Errorf("the Envoys' filters: %w", err)
		}
	}
	return n, nil
}

// waitRoutable waits until every Envoy has the change and reports the worker
// as a healthy host. Envoy holds a new host back until its first active
// health check passes, so "config acknowledged" alone is not "routable".
func (m *Manager) waitRoutable(ctx context.Context, w registry.Worker, gen uint64) (int, bool) {
	n, ok := m.waitSynced(ctx, gen)
	if !ok || n == 0 {
		return n, ok
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.SyncTimeout)
	defer cancel()
	for {
		if m.routableEverywhere(ctx, w) {
			m.mu.Lock()
			m.confirmed[w.Key()] = true
			m.mu.Unlock()
			return n, true
		}
		select {
		case <-ctx.Done():
			m.log.WithField("worker", w.Key()).Warn("Envoys did not report the worker healthy in time (is its /health answering?)")
			return n, false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (m *Manager) routableEverywhere(ctx context.Context, w registry.Worker) bool {
	addr := net.JoinHostPort(w.Address, strconv.Itoa(int(w.URL.Port)))
	for _, node := range m.syncer.Nodes() {
		if node.AdminAddress == "" {
			continue // cannot tell; the ACK has to do
		}
		healthy, _, found, err := m.admin.EndpointStats(ctx, node.AdminAddress, wire.ClusterWorkers, addr)
		if err != nil || !found || !healthy {
			return false
		}
	}
	return true
}

// resolveAddr gives the IP Envoy connects to. A hostname is resolved here,
// once, and every address it resolves to must pass the same checks as an IP
// literal: DNS must not turn into a way to reach a metadata service.
func (m *Manager) resolveAddr(ctx context.Context, u registry.WorkerURL) (string, error) {
	if a, err := netip.ParseAddr(u.Host); err == nil {
		return a.String(), nil
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.ProbeTimeout)
	defer cancel()
	addrs, err := m.resolve(ctx, u.Host)
	if err != nil || len(addrs) == 0 {
		return "", fmt.Errorf("%w: %s does not resolve: %v", registry.ErrInvalidURL, u.Host, err)
	}
	for _, a := range addrs {
		if err := registry.CheckWorkerAddr(a); err != nil {
			return "", fmt.Errorf("%w: %s resolves to %s: %v", registry.ErrInvalidURL, u.Host, a, err)
		}
	}
	// Prefer IPv4, as most GPU hosts listen there.
	slices.SortStableFunc(addrs, func(a, b netip.Addr) int {
		switch {
		case a.Unmap().Is4() && !b.Unmap().Is4():
			return -1
		case !a.Unmap().Is4() && b.Unmap().Is4():
			return 1
		}
		return 0
	})
	return addrs[0].Unmap().String(), nil
}

// probeCapabilities reads /v1/models. A worker that does not answer is still
// admitted (it may be starting); its capabilities stay unknown until a later
// refresh succeeds.
func (m *Manager) probeCapabilities(ctx context.Context, u registry.WorkerURL) registry.Capabilities {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.ProbeTimeout)
	defer cancel()
	body, err := m.get(ctx, u.String()+"/v1/models", 4<<20)
	if err != nil {
		m.log.WithError(err).WithField("worker", u.String()).Debug("could not read capabilities")
		return registry.Capabilities{}
	}
	caps, err := ParseModels(body)
	if err != nil {
		m.log.WithError(err).WithField("worker", u.String()).Warn("worker answered /v1/models with something unexpected")
		return registry.Capabilities{}
	}
	return caps
}

// ParseModels reads a /v1/models answer.
func ParseModels(body []byte) (registry.Capabilities, error) {
	var doc struct {
		Data []json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return registry.Capabilities{}, fmt.Errorf("decode /v1/models: %w", err)
	}
	caps := registry.Capabilities{Known: true}
	for _, raw := range doc.Data {
		var entry struct {
			ID       string `json:"id"`
			Root     string `json:"root"`
			TaskType string `json:"task_type"`
		}
		if err := json.Unmarshal(raw, &entry); err != nil {
			return registry.Capabilities{}, fmt.Errorf("decode /v1/models entry: %w", err)
		}
		// Requests may name the served name (id) or the model path (root,
		// what /v1/model_info reports): both route here.
		for _, name := range []string{entry.ID, entry.Root} {
			// A name that cannot be matched safely (control characters)
			// is not routed by.
			if registry.ValidName(name) && !slices.Contains(caps.ModelIDs, name) {
				caps.ModelIDs = append(caps.ModelIDs, name)
			}
		}
		if entry.TaskType != "" && !slices.Contains(caps.TaskTypes, entry.TaskType) {
			caps.TaskTypes = append(caps.TaskTypes, entry.TaskType)
		}
		caps.Models = append(caps.Models, raw)
	}
	return caps, nil
}

// CheckHealth asks the worker's /health once.
func (m *Manager) CheckHealth(ctx context.Context, u registry.WorkerURL) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.ProbeTimeout)
	defer cancel()
	_, err := m.get(ctx, u.String()+"/health", 64<<10)
	return err
}

func (m *Manager) get(ctx context.Context, url string, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: GET %s: %v", ErrUnreachable, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return nil, fmt.Errorf("%w: GET %s: %v", ErrUnreachable, url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: GET %s answered %d", ErrRejected, url, resp.StatusCode)
	}
	return body, nil
}

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
			m.record(key, w.State, StateGone, CauseRemovedNow, "removed by operator")
		}
		w.State = StateGone
		return w, true, err
	}
	nw, gen, err := m.move(key, CauseRemoved, "removed by operator", w.State)
	if err != nil {
		return nw, false, err
	}
	_, synced := m.waitSynced(ctx, gen)
	m.startDrain(key, gen)
	return nw, synced, nil
}

// drain is one running drain; a pointer, so a finished drain removes only
// its own entry and not a newer one for the same worker.
type drain struct{ cancel context.CancelFunc }

func (m *Manager) cancelDrain(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if d, ok := m.drains[key]; ok {
		d.cancel()
		delete(m.drains, key)
	}
}

func (m *Manager) startDrain(key string, gen uint64) {
	ctx, cancel := context.WithTimeout(m.baseCtx, m.cfg.DrainTimeout)
	d := &drain{cancel: cancel}
	m.mu.Lock()
	if old, ok := m.drains[key]; ok {
		old.cancel()
	}
	m.drains[key] = d
	m.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer func() {
			cancel()
			m.mu.Lock()
			if m.drains[key] == d {
				delete(m.drains, key)
			}
			m.mu.Unlock()
		}()
		idle := m.waitIdle(ctx, key, gen)
		if m.baseCtx.Err() != nil || errors.Is(ctx.Err(), context.Canceled) {
			return // shutting down, or re-admitted meanwhile
		}
		// Only a worker still draining goes: a re-admission wins.
		if _, err := m.reg.Delete(key, registry.StateDraining); err != nil {
			return
		}
		detail := "its requests finished"
		if !idle {
			detail = "drain timeout (" + m.cfg.DrainTimeout.String() + ") with requests still in flight"
		}
		m.record(key, registry.StateDraining, StateGone, CauseDrained, detail)
	}()
}

// idleReadings is how many empty in-flight readings in a row end a drain.
const idleReadings = 2

// waitIdle polls every connected Envoy until none has a request in flight to
// the worker, twice in a row. It returns false if ctx ended first.
//
// Once is not enough: Envoy acknowledges a configuration when its main
// thread has applied it, and each worker thread takes it on its next
// event-loop turn. A thread that is late (a loaded machine) can still send
// the worker a request after the first empty reading; the second reading,
// one poll later, counts it.
func (m *Manager) waitIdle(ctx context.Context, key string, gen uint64) bool {
	if _, err := m.inForce(ctx, gen); err != nil {
		return false
	}
	u, err := registry.ParseWorkerURL(key)
	if err != nil {
		return false
	}
	w, ok := m.reg.Get(u.String())
	if !ok {
		return true // gone: nothing can be in flight through the router
	}
	addr := net.JoinHostPort(w.Address, strconv.Itoa(int(u.Port)))
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for quiet := 0; ; {
		if m.inFlight(ctx, addr) == 0 {
			quiet++
		} else {
			quiet = 0
		}
		if quiet == idleReadings {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// inFlight sums a host's active requests over every Envoy, plus the
// requests each Envoy holds pending for a connection in the workers
// cluster: Envoy picks the host of a pending request before the request
// counts in the host's active requests, so a request picked just before the
// host left rotation would otherwise reach it after the drain "ended" (seen
// once under load: an answer from updated weights under the old version's
// header). An Envoy whose admin interface cannot be read counts as busy,
// so a drain never ends on a guess.
func (m *Manager) inFlight(ctx context.Context, addr string) uint64 {
	var total uint64
	for _, n := range m.syncer.Nodes() {
		if n.AdminAddress == "" {
			return 1
		}
		_, active, _, err := m.admin.EndpointStats(ctx, n.AdminAddress, wire.ClusterWorkers, addr)
		if err != nil {
			return 1
		}
		pending, err := m.admin.PendingRequests(ctx, n.AdminAddress, wire.ClusterWorkers)
		if err != nil {
			return 1
		}
		total += active + pending
	}
	return total
}
