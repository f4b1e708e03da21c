// Package loadboard is the control plane's side of least-work routing: each
// Envoy's filter reports the work it has outstanding on each worker, and
// gets back the workers it may pick from with the work every other Envoy
// has sent them. The board also tells a drain when every picking filter
// has seen that a worker left rotation.
package loadboard

import (
	"context"
	"fmt"
	"math"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/diffrouter/diffusion-router/filter/pick"
	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/wire"
)

// Limits on what one report may hold: the path is unauthenticated soft
// state (it steers load, never eligibility), so it must not grow memory.
const (
	MaxNodes        = 64
	MaxHostsPerNode = 4096
	maxNodeID       = 256
	// aliveFor is how long a report counts: the filter's view lives
	// wire.ViewTTL from when it arrived, which is after the report did,
	// so the board waits a margin longer before taking a silent Envoy as
	// no longer picking.
	aliveFor = wire.ViewTTL + 250*time.Millisecond
)

// Board holds the latest report of each Envoy.
type Board struct {
	mu      sync.Mutex
	reports map[string]entry
	now     func() time.Time
}

type entry struct {
	at     time.Time
	report wire.LoadReport
}

// New returns an empty board; now is the clock (time.Now outside tests).
func New(now func() time.Time) *Board {
	return &Board{reports: map[string]entry{}, now: now}
}

// Check validates a report.
func Check(r wire.LoadReport) error {
	switch {
	case r.Node == "" || len(r.Node) > maxNodeID:
		return fmt.Errorf("\"node\" must be 1 to %d characters", maxNodeID)
	case len(r.Hosts) > MaxHostsPerNode:
		return fmt.Errorf("at most %d hosts per report", MaxHostsPerNode)
	}
	for _, h := range r.Hosts {
		switch {
		case h.Addr == "" || len(h.Addr) > 300:
			return fmt.Errorf("host address %q is empty or too long", h.Addr)
		case h.Work < 0 || h.Requests < 0:
			return fmt.Errorf("host %s: work and requests must not be negative", h.Addr)
		case !finite(h.MsPerCost) || !finite(h.Base) || h.Samples < 0:
			return fmt.Errorf("host %s: ms_per_cost, base and samples must be finite and not negative", h.Addr)
		}
	}
	return nil
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) && f >= 0 }

// Addr is a worker's address as Envoy's host map (and the filter) names it.
func Addr(w registry.Worker) string {
	return net.JoinHostPort(w.Address, strconv.Itoa(int(w.URL.Port)))
}

// Sync records a node's report and returns its view: the workers of snap a
// request may go to (active, awake, and not out by Envoy's word), with the
// work the other live Envoys have sent each. A new node beyond MaxNodes is
// refused.
func (b *Board) Sync(r wire.LoadReport, snap registry.Snapshot, out func(key string) bool) (wire.PickView, error) {
	if err := Check(r); err != nil {
		return wire.PickView{}, err
	}
	now := b.now()
	b.mu.Lock()
	b.expire(now)
	if _, known := b.reports[r.Node]; !known && len(b.reports) >= MaxNodes {
		b.mu.Unlock()
		return wire.PickView{}, fmt.Errorf("more than %d Envoys report load", MaxNodes)
	}
	b.reports[r.Node] = entry{at: now, report: r}
	remote := map[string][2]int64{}
	speeds, bases := map[string][]float64{}, map[string][]float64{}
	for node, e := range b.reports {
		for _, h := range e.report.Hosts {
			if node != r.Node {
				rw := remote[h.Addr]
				remote[h.Addr] = [2]int64{rw[0] + h.Work, rw[1] + h.Requests}
			}
			if h.Samples > 0 && h.MsPerCost > 0 {
				speeds[h.Addr] = append(speeds[h.Addr], h.MsPerCost)
				bases[h.Addr] = append(bases[h.Addr], h.Base)
			}
		}
	}
	b.mu.Unlock()

	v := wire.PickView{Generation: snap.Generation, Workers: []wire.PickWorker{}}
	for _, w := range snap.Workers {
		if !w.Routable() || out(w.Key()) {
			continue
		}
		a := Addr(w)
		v.Workers = append(v.Workers, wire.PickWorker{Addr: a, Video: w.Caps.Video(), Image: w.Caps.Image(),
			Models: w.Caps.ModelIDs, RemoteWork: remote[a][0], RemoteRequests: remote[a][1],
			MsPerCost: pick.Median(speeds[a]), Base: pick.Median(bases[a])})
	}
	return v, nil
}

// expire drops reports older than aliveFor; b.mu is held.
func (b *Board) expire(now time.Time) {
	for node, e := range b.reports {
		if now.Sub(e.at) > aliveFor {
			delete(b.reports, node)
		}
	}
}

// Seen reports whether every Envoy that may be picking workers has a view
// of generation gen or later: each live report says so, and a silent
// Envoy's filter stops picking once its view is older than wire.ViewTTL.
func (b *Board) Seen(gen uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.expire(b.now())
	for _, e := range b.reports {
		if e.report.Generation < gen {
			return false
		}
	}
	return true
}

// WaitSeen polls Seen until it holds or ctx ends.
func (b *Board) WaitSeen(ctx context.Context, gen uint64) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !b.Seen(gen) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("filters did not see generation %d: %w", gen, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// HostLoad is one worker's outstanding work over every live Envoy.
type HostLoad struct {
	Work, Requests int64
	// MsPerCost is the median of the Envoys' learned speeds (0: none).
	MsPerCost float64
	Envoys    int
}

// Hosts sums the live reports by worker address.
func (b *Board) Hosts() map[string]HostLoad {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.expire(b.now())
	out := map[string]HostLoad{}
	speeds := map[string][]float64{}
	for _, e := range b.reports {
		for _, h := range e.report.Hosts {
			l := out[h.Addr]
			l.Work += h.Work
			l.Requests += h.Requests
			l.Envoys++
			out[h.Addr] = l
			if h.Samples > 0 && h.MsPerCost > 0 {
				speeds[h.Addr] = append(speeds[h.Addr], h.MsPerCost)
			}
		}
	}
	for a, s := range speeds {
		l := out[a]
		l.MsPerCost = pick.Median(s)
		out[a] = l
	}
	return out
}

// Nodes counts the Envoys whose reports are live.
func (b *Board) Nodes() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.expire(b.now())
	return len(b.reports)
}
