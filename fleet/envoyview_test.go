package fleet

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/envoy"
	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/wire"
)

// fakeEnvoys is a fleet of Envoys as the control plane sees them: the xDS
// nodes (every change applied at once) and what each one's admin interface
// reports, which a test sets.
type fakeEnvoys struct {
	mu      sync.Mutex
	hosts   map[string]map[string]envoy.HostStats // node -> hostname -> stats
	down    map[string]bool                       // nodes whose admin cannot be read
	reads   int                                   // EndpointStats calls
	pending map[string]uint64                     // node -> requests waiting for a connection
	// afterRead, if set, runs (lock held) after each EndpointStats answer.
	afterRead func(f *fakeEnvoys)
}

func (f *fakeEnvoys) setPending(node string, n uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending[node] = n
}

func (f *fakeEnvoys) PendingRequests(_ context.Context, admin, cluster string) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down[admin] {
		return 0, errors.New("admin down")
	}
	return f.pending[admin], nil
}

func (f *fakeEnvoys) endpointReads() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads
}

func newFakeEnvoys(nodes ...string) *fakeEnvoys {
	f := &fakeEnvoys{hosts: map[string]map[string]envoy.HostStats{}, down: map[string]bool{}, pending: map[string]uint64{}}
	for _, n := range nodes {
		f.hosts[n] = map[string]envoy.HostStats{}
	}
	return f
}

// set records what node reports of the worker at hostPort.
func (f *fakeEnvoys) set(node, hostPort string, h envoy.HostStats) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h.Cluster, h.Hostname, h.Address = wire.ClusterWorkers, hostPort, hostPort
	f.hosts[node][hostPort] = h
}

func (f *fakeEnvoys) setDown(node string, down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down[node] = down
}

func (f *fakeEnvoys) WaitSynced(context.Context, uint64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.hosts), nil
}

func (f *fakeEnvoys) Nodes() []envoy.Node {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []envoy.Node
	for n := range f.hosts {
		out = append(out, envoy.Node{ID: n, AdminAddress: n, Synced: true})
	}
	return out
}

func (f *fakeEnvoys) Clusters(_ context.Context, admin string) ([]envoy.HostStats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down[admin] {
		return nil, errors.New("admin down")
	}
	var out []envoy.HostStats
	for _, h := range f.hosts[admin] {
		out = append(out, h)
	}
	return out, nil
}

func (f *fakeEnvoys) EndpointStats(_ context.Context, admin, cluster, address string) (bool, uint64, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	if f.down[admin] {
		return false, 0, false, errors.New("admin down")
	}
	if f.afterRead != nil {
		defer f.afterRead(f)
	}
	h, ok := f.hosts[admin][address]
	if !ok || cluster != wire.ClusterWorkers {
		return false, 0, false, nil
	}
	return !h.FailedActiveHC && !h.FailedOutlier, h.RqActive, true, nil
}

// fakeManager is a manager over a fake fleet of Envoys, with one active
// worker (healthy /health) registered; it returns the worker's key and
// host:port as Envoy names it.
func fakeManager(t *testing.T, envoys *fakeEnvoys, cfg Config) (*Manager, *transitionLog, string, string) {
	t.Helper()
	worker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"status":"ok"}`)
	}))
	t.Cleanup(worker.Close)
	l := logrus.New()
	l.SetOutput(io.Discard)
	rec := &transitionLog{}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cfg.Envoys, cfg.Recorder = envoys, rec
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = time.Second
	}
	reg := registry.New(nil)
	m := NewManager(ctx, reg, envoys, cfg, l.WithField("t", t.Name()))
	t.Cleanup(m.Wait)
	t.Cleanup(cancel) // before Wait: stops drains still running
	u, err := registry.ParseWorkerURL(worker.URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Add(u, u.Host, registry.Capabilities{Known: true}, registry.StateActive, ""); err != nil {
		t.Fatal(err)
	}
	return m, rec, u.String(), strings.TrimPrefix(worker.URL, "http://")
}

// until polls cond for up to 5 s.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDrainWaitsForEveryEnvoy(t *testing.T) {
	envoys := newFakeEnvoys("a", "b")
	m, rec, key, hp := fakeManager(t, envoys, Config{DrainTimeout: time.Minute})
	envoys.set("a", hp, envoy.HostStats{RqActive: 2})
	envoys.set("b", hp, envoy.HostStats{RqActive: 0})

	w, _, err := m.Remove(context.Background(), key)
	if err != nil || w.State != registry.StateDraining {
		t.Fatalf("remove = %+v, %v", w, err)
	}
	// Envoy a still has requests in flight, then its admin goes silent:
	// the worker stays while either holds.
	envoys.set("a", hp, envoy.HostStats{RqActive: 1})
	envoys.setDown("a", true)
	envoys.set("a", hp, envoy.HostStats{RqActive: 0})
	if _, gone := m.Registry().Get(key); !gone {
		t.Fatal("the worker left while an Envoy had requests in flight")
	}
	before := envoys.endpointReads()
	until(t, "three more drain polls", func() bool { return envoys.endpointReads() >= before+3 })
	if _, ok := m.Registry().Get(key); !ok {
		t.Fatal("the worker left while an Envoy's admin could not be read")
	}
	envoys.setDown("a", false)
	// A request Envoy b picked the worker for, still waiting for a
	// connection, holds the drain too.
	envoys.setPending("b", 1)
	before = envoys.endpointReads()
	until(t, "three more drain polls", func() bool { return envoys.endpointReads() >= before+3 })
	if _, ok := m.Registry().Get(key); !ok {
		t.Fatal("the worker left while a request was pending for it")
	}
	envoys.setPending("b", 0)
	until(t, "the drained worker to leave", func() bool { _, ok := m.Registry().Get(key); return !ok })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	want := [][3]string{{"active", "draining", "removed"}, {"draining", "removed", "drained"}}
	if len(rec.seen) != 2 || rec.seen[0] != want[0] || rec.seen[1] != want[1] {
		t.Fatalf("transitions %v, want %v", rec.seen, want)
	}
}

// TestDrainOutwaitsALateThread: an Envoy worker thread that took the
// drain late sends the worker one more request right after the first empty
// reading; the drain must not end on that reading.
func TestDrainOutwaitsALateThread(t *testing.T) {
	envoys := newFakeEnvoys("a")
	m, _, key, hp := fakeManager(t, envoys, Config{DrainTimeout: time.Minute})
	late := false
	envoys.afterRead = func(f *fakeEnvoys) {
		if !late {
			late = true
			h := f.hosts["a"][hp]
			h.RqActive = 1
			f.hosts["a"][hp] = h
		}
	}
	if _, _, err := m.Remove(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	gone := func() bool { _, ok := m.Registry().Get(key); return !ok }
	until(t, "three drain polls or the end of the drain", func() bool { return envoys.endpointReads() >= 3 || gone() })
	if gone() {
		t.Fatal("the drain ended on one empty reading while a late request was in flight")
	}
	envoys.set("a", hp, envoy.HostStats{RqActive: 0})
	before := envoys.endpointReads()
	until(t, "the drained worker to leave", gone)
	if got := envoys.endpointReads() - before; got < idleReadings {
		t.Fatalf("the drain ended after %d empty readings, want %d", got, idleReadings)
	}
}

func TestDrainTimeoutRemovesAnyway(t *testing.T) {
	envoys := newFakeEnvoys("a")
	m, rec, key, hp := fakeManager(t, envoys, Config{DrainTimeout: 200 * time.Millisecond})
	envoys.set("a", hp, envoy.HostStats{RqActive: 5})
	if _, _, err := m.Remove(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	until(t, "the drain timeout to remove the worker", func() bool { _, ok := m.Registry().Get(key); return !ok })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.seen) != 2 || rec.seen[1][2] != string(CauseDrained) {
		t.Fatalf("transitions %v", rec.seen)
	}
}

func TestReadmitCancelsDrain(t *testing.T) {
	envoys := newFakeEnvoys("a")
	m, _, key, hp := fakeManager(t, envoys, Config{DrainTimeout: time.Minute, SyncTimeout: time.Second})
	envoys.set("a", hp, envoy.HostStats{RqActive: 1})
	if _, _, err := m.Remove(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	res, err := m.Admit(context.Background(), key)
	if err != nil || !res.Revived || res.Worker.State != registry.StateActive {
		t.Fatalf("re-admit = %+v, %v", res, err)
	}
	envoys.set("a", hp, envoy.HostStats{RqActive: 0})
	// The cancelled drain must not remove the worker now that it is idle.
	m.Wait()
	if w, ok := m.Registry().Get(key); !ok || w.State != registry.StateActive {
		t.Fatalf("after the cancelled drain: %+v (registered %v)", w, ok)
	}
}

func TestEjections(t *testing.T) {
	tests := []struct {
		name string
		// first and second are what Envoys a and b report in two
		// observations in a row.
		first, second  [2]envoy.HostStats
		wantQuarantine bool
	}{
		{name: "nobody ejects",
			first:  [2]envoy.HostStats{{RqTotal: 5}, {RqTotal: 5}},
			second: [2]envoy.HostStats{{RqTotal: 9}, {RqTotal: 9}}},
		{name: "a ejects, b sends nothing", wantQuarantine: true,
			first:  [2]envoy.HostStats{{RqTotal: 5}, {RqTotal: 5}},
			second: [2]envoy.HostStats{{RqTotal: 9, RqError: 4, FailedOutlier: true}, {RqTotal: 5}}},
		{name: "a ejects, b serves it without errors",
			first:  [2]envoy.HostStats{{RqTotal: 5}, {RqTotal: 5}},
			second: [2]envoy.HostStats{{RqTotal: 9, RqError: 4, FailedOutlier: true}, {RqTotal: 20}}},
		{name: "a ejects, b fails too", wantQuarantine: true,
			first:  [2]envoy.HostStats{{RqTotal: 5}, {RqTotal: 5}},
			second: [2]envoy.HostStats{{RqTotal: 9, RqError: 4, FailedOutlier: true}, {RqTotal: 20, RqError: 1}}},
		{name: "both eject", wantQuarantine: true,
			first:  [2]envoy.HostStats{{RqTotal: 5}, {RqTotal: 5}},
			second: [2]envoy.HostStats{{RqTotal: 9, FailedOutlier: true}, {RqTotal: 9, FailedOutlier: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			envoys := newFakeEnvoys("a", "b")
			m, rec, key, hp := fakeManager(t, envoys, Config{OutlierFailures: 3})
			for _, view := range [][2]envoy.HostStats{tt.first, tt.second} {
				envoys.set("a", hp, view[0])
				envoys.set("b", hp, view[1])
				m.envoys.observeOnce(context.Background())
			}
			w, _ := m.Registry().Get(key)
			if got := w.State == registry.StateQuarantined; got != tt.wantQuarantine {
				t.Fatalf("state %s (%s), want quarantined=%v", w.State, w.Reason, tt.wantQuarantine)
			}
			if tt.wantQuarantine && (len(rec.seen) != 1 || rec.seen[0][2] != string(CauseEjected) || !strings.Contains(w.Reason, "outlier")) {
				t.Fatalf("transitions %v, reason %q", rec.seen, w.Reason)
			}
			if l := m.Loads()[key]; !l.Seen || l.Ejected != (tt.second[0].FailedOutlier || tt.second[1].FailedOutlier) {
				t.Fatalf("load %+v", l)
			}
		})
	}
}

func TestProbeQuarantinesAfterThreshold(t *testing.T) {
	envoys := newFakeEnvoys("a")
	m, rec, key, _ := fakeManager(t, envoys, Config{FailureThreshold: 2, HealthInterval: time.Hour})
	bad, err := registry.ParseWorkerURL("http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.reg.Add(bad, "127.0.0.1", registry.Capabilities{Known: true}, registry.StateActive, ""); err != nil {
		t.Fatal(err)
	}
	m.probes.probeOnce(context.Background())
	if w, _ := m.Registry().Get(bad.String()); w.State != registry.StateActive {
		t.Fatalf("quarantined after one failure: %+v", w)
	}
	m.probes.probeOnce(context.Background())
	if w, _ := m.Registry().Get(bad.String()); w.State != registry.StateQuarantined {
		t.Fatalf("not quarantined after two failures: %+v", w)
	}
	if w, _ := m.Registry().Get(key); w.State != registry.StateActive {
		t.Fatalf("the healthy worker changed: %+v", w)
	}
	if len(rec.seen) != 1 || rec.seen[0] != [3]string{"active", "quarantined", "probe_failed"} {
		t.Fatalf("transitions %v", rec.seen)
	}
}

// pickersAt is a fake of the filters that pick workers: they have seen
// registry generations up to seen.
type pickersAt struct {
	mu    sync.Mutex
	seen  uint64
	asked uint64
	polls int
}

func (p *pickersAt) set(gen uint64) { p.mu.Lock(); p.seen = gen; p.mu.Unlock() }

func (p *pickersAt) WaitSeen(ctx context.Context, gen uint64) error {
	for {
		p.mu.Lock()
		p.asked = gen
		p.polls++
		done := p.seen >= gen
		p.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// TestDrainWaitsForPickers: with least-work routing a filter picks the
// worker itself, so an idle Envoy is not enough: the drain ends only once
// every picking filter has seen the generation that took the worker out.
func TestDrainWaitsForPickers(t *testing.T) {
	envoys := newFakeEnvoys("a")
	pickers := &pickersAt{}
	m, _, key, hp := fakeManager(t, envoys, Config{DrainTimeout: time.Minute, Pickers: pickers})
	envoys.set("a", hp, envoy.HostStats{RqActive: 0})
	if _, _, err := m.Remove(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	gen := m.Registry().Snapshot().Generation
	until(t, "the drain to ask the pickers", func() bool { pickers.mu.Lock(); defer pickers.mu.Unlock(); return pickers.asked == gen })
	before := envoys.endpointReads()
	pickers.set(gen - 1)
	polls := func() int { pickers.mu.Lock(); defer pickers.mu.Unlock(); return pickers.polls }
	n := polls()
	until(t, "ten more looks at the pickers", func() bool { return polls() >= n+10 })
	if _, ok := m.Registry().Get(key); !ok {
		t.Fatal("the worker left before the filters saw it leave rotation")
	}
	if envoys.endpointReads() != before {
		t.Fatal("the drain polled Envoy before the filters saw the change")
	}
	pickers.set(gen)
	until(t, "the drained worker to leave", func() bool { _, ok := m.Registry().Get(key); return !ok })
}
