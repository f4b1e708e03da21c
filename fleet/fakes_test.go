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

	"github.com/diffrouter/diffusion-router/harness/poll"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/envoyadmin"
	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/wire"
)

// fakeEnvoys is a fleet of Envoys as the control plane sees them: the xDS
// nodes (every change applied at once) and what each one's admin interface
// reports, which a test sets.
type fakeEnvoys struct {
	mu      sync.Mutex
	hosts   map[string]map[string]envoyadmin.HostStats // node -> hostname -> stats
	down    map[string]bool                            // nodes whose admin cannot be read
	reads   int                                        // EndpointStats calls
	pending map[string]uint64                          // node -> requests waiting for a connection
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
	f := &fakeEnvoys{hosts: map[string]map[string]envoyadmin.HostStats{}, down: map[string]bool{}, pending: map[string]uint64{}}
	for _, n := range nodes {
		f.hosts[n] = map[string]envoyadmin.HostStats{}
	}
	return f
}

// set records what node reports of the worker at hostPort.
func (f *fakeEnvoys) set(node, hostPort string, h envoyadmin.HostStats) {
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

func (f *fakeEnvoys) Nodes() []envoyadmin.Node {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []envoyadmin.Node
	for n := range f.hosts {
		out = append(out, envoyadmin.Node{ID: n, AdminAddress: n, Synced: true})
	}
	return out
}

func (f *fakeEnvoys) Clusters(_ context.Context, admin string) ([]envoyadmin.HostStats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down[admin] {
		return nil, errors.New("admin down")
	}
	var out []envoyadmin.HostStats
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
	poll.Until(t, 5*time.Second, 5*time.Millisecond, what, cond)
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

type noEnvoys struct{}

func (noEnvoys) WaitSynced(context.Context, uint64) (int, error) { return 0, nil }
func (noEnvoys) Nodes() []envoyadmin.Node                        { return nil }

func newManager(t *testing.T) *Manager {
	t.Helper()
	l := logrus.New()
	l.SetOutput(io.Discard)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return NewManager(ctx, registry.New(nil), noEnvoys{}, Config{ProbeTimeout: time.Second}, l.WithField("t", t.Name()))
}
