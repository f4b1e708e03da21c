// Package loadboard is the control plane's side of least-work routing: each
// Envoy's filter reports the work it has outstanding on each worker, and
// gets back the workers it may pick from with the work every other Envoy
// has sent them. The board also tells a drain when every picking filter
// has seen that a worker left rotation.
package loadboard

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"math"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/diffrouter/diffusion-router/leastwork"
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

// Board holds the latest report of each Envoy, and learns each worker's
// speed from every Envoy's completions merged in the order the worker
// answered them: one Envoy sees only its own part of a worker's queue, so
// its own estimate counts the other Envoys' requests in as service time.
type Board struct {
	mu      sync.Mutex
	reports map[string]entry
	now     func() time.Time
	// speeds is the fleet-wide estimator; pending holds completions not
	// yet old enough to be sure none from another Envoy comes before them.
	speeds  leastwork.Table
	pending []wire.Completion
	maxDone int64
	// applied is what the Envoys run; nil: every snapshot Sync is given
	// counts as running (no xDS, as in unit tests).
	applied  *applied
	ejection wire.Ejection
	// ended are the video jobs Envoys saw end lately, passed on to the
	// others (oldest first, at most MaxNodes x leastwork.MaxFinished).
	ended []endedJob
	// signed is each node's newest accepted signing time (Claim).
	signed map[string]int64
	// words are the workers' own readings, by address (SetWord); peaks
	// the most requests the Envoys counted on each lately.
	words map[string]word
	peaks map[string]peak
	// freed counts, by worker, the ends the reports said (Freed).
	freed map[string]uint64
	// recent are each node's latest accepted signing times (Claim).
	recent map[string][]int64
	// suspects are the workers reported overdue (suspect.go).
	suspects  map[string]Suspect
	suspected func(addr string, o wire.Overdue, suspect bool)
}

type endedJob struct {
	node string
	job  wire.EndedJob
	at   time.Time
}

// Options configure a board.
type Options struct {
	// Now is the clock (time.Now if nil).
	Now func() time.Time
	// Synced names the newest registry generation every connected Envoy
	// has acknowledged (xds/server.Server.SyncedGeneration). With it, a
	// view lists a worker only once the Envoys run it as routable with
	// its current weights, and the publisher must hand every snapshot to
	// Published. Nil: each snapshot Sync gets counts as running.
	Synced func() uint64
	// Ejection is Envoy's outlier-detection rule, passed on to the
	// filters (wire.PickView.Ejection).
	Ejection wire.Ejection
	// Suspected, if set, is told when a worker becomes suspect (a filter
	// reports a request on it far overdue) and when it no longer is. It
	// runs under the board's lock: it must not call the board.
	Suspected func(addr string, o wire.Overdue, suspect bool)
}

// Merging completions: a completion is taken once the newest one seen is
// mergeWindow later (every Envoy reports within about two sync
// intervals); at most maxPending wait.
const (
	mergeWindow = 500 * time.Millisecond
	maxPending  = 16 * leastwork.MaxCompletions
	// clockSlack is how far ahead of the control plane's clock an Envoy's
	// may run before its completions are ignored.
	clockSlack = time.Minute
)

type entry struct {
	at     time.Time
	report wire.LoadReport
}

// New returns an empty board.
func New(o Options) *Board {
	b := &Board{reports: map[string]entry{}, now: o.Now, ejection: o.Ejection, signed: map[string]int64{}, words: map[string]word{}, peaks: map[string]peak{}, freed: map[string]uint64{}, recent: map[string][]int64{},
		suspects: map[string]Suspect{}, suspected: o.Suspected}
	if b.now == nil {
		b.now = time.Now
	}
	if o.Synced != nil {
		b.applied = &applied{synced: o.Synced}
	}
	return b
}

// Published notes a registry snapshot about to go out to the Envoys.
func (b *Board) Published(s registry.Snapshot) {
	if b.applied != nil {
		b.applied.published(s)
	}
}

// Check validates a report.
func Check(r wire.LoadReport) error {
	switch {
	case r.Node == "" || len(r.Node) > maxNodeID:
		return fmt.Errorf("\"node\" must be 1 to %d characters", maxNodeID)
	case len(r.Hosts) > MaxHostsPerNode:
		return fmt.Errorf("at most %d hosts per report", MaxHostsPerNode)
	case len(r.Completions) > leastwork.MaxCompletions:
		return fmt.Errorf("at most %d completions per report", leastwork.MaxCompletions)
	case len(r.Finished) > leastwork.MaxFinished:
		return fmt.Errorf("at most %d finished jobs per report", leastwork.MaxFinished)
	case len(r.Freed) > MaxHostsPerNode:
		return fmt.Errorf("at most %d freed hosts per report", MaxHostsPerNode)
	}
	for _, a := range r.Freed {
		if a == "" || len(a) > 300 {
			return fmt.Errorf("freed host address %q is empty or too long", a)
		}
	}
	for _, e := range r.Finished {
		if e.ID == "" || len(e.ID) > wire.MaxJobID {
			return fmt.Errorf("finished job id must be 1 to %d characters", wire.MaxJobID)
		}
		// NaN fails both comparisons.
		if !(e.GPUMs >= 0 && e.GPUMs <= wire.MaxJobGPUMs) {
			return fmt.Errorf("finished job %q: gpu_ms must be 0 to %g", e.ID, wire.MaxJobGPUMs)
		}
	}
	for _, c := range r.Completions {
		if c.Addr == "" || len(c.Addr) > 300 || c.Cost < 0 || c.Cost > wire.MaxReportedCost || c.Sent < 0 || c.Done < c.Sent {
			return fmt.Errorf("completion %+v: needs an address, a cost from 0 to %d and done not before sent", c, wire.MaxReportedCost)
		}
	}
	for _, h := range r.Hosts {
		switch {
		case h.Addr == "" || len(h.Addr) > 300:
			return fmt.Errorf("host address %q is empty or too long", h.Addr)
		case h.Work < 0 || h.Requests < 0 || h.Work > wire.MaxReportedWork || h.Requests > wire.MaxReportedRequests:
			return fmt.Errorf("host %s: work must be 0 to %d and requests 0 to %d", h.Addr, wire.MaxReportedWork, wire.MaxReportedRequests)
		case !finite(h.MsPerCost) || h.Samples < 0:
			return fmt.Errorf("host %s: ms_per_cost and samples must be finite and not negative", h.Addr)
		case h.Overdue != nil && (h.Overdue.RanMs < 0 || h.Overdue.ExpectedMs < 0):
			return fmt.Errorf("host %s: overdue ran_ms and expected_ms must not be negative", h.Addr)
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
// request may go to (active, awake, not out by Envoy's word, and run so by
// every Envoy), with the work the other live Envoys have sent each. A new
// node beyond MaxNodes is refused.
func (b *Board) Sync(r wire.LoadReport, snap registry.Snapshot, out func(key string) bool) (wire.PickView, error) {
	if err := Check(r); err != nil {
		return wire.PickView{}, err
	}
	return b.syncChecked(r, snap, out)
}

// SyncSigned is Sync for a report signed at signedAt (Unix ms): checked,
// then claimed (Claim: each signing time counts once), then synced. A
// refused claim wraps ErrClaimRefused.
func (b *Board) SyncSigned(r wire.LoadReport, signedAt int64, snap registry.Snapshot, out func(key string) bool) (wire.PickView, error) {
	if err := Check(r); err != nil {
		return wire.PickView{}, err
	}
	late, err := b.Claim(r.Node, signedAt)
	if err != nil {
		return wire.PickView{}, err
	}
	if late {
		// Its load is older than what the node said since: keep that.
		r.Hosts = nil
		return b.syncLoad(r, snap, out, false)
	}
	return b.syncChecked(r, snap, out)
}

// syncChecked is Sync for a report Check accepted.
func (b *Board) syncChecked(r wire.LoadReport, snap registry.Snapshot, out func(key string) bool) (wire.PickView, error) {
	return b.syncLoad(r, snap, out, true)
}

// syncLoad records what r adds (completions, ended jobs, freed slots),
// and with load its hosts as the node's load, and returns the node's view.
func (b *Board) syncLoad(r wire.LoadReport, snap registry.Snapshot, out func(key string) bool, load bool) (wire.PickView, error) {
	running, known := b.running(snap)
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.expire(now)
	if _, known := b.reports[r.Node]; !known && len(b.reports) >= MaxNodes {
		return wire.PickView{}, fmt.Errorf("more than %d Envoys report load", MaxNodes)
	}
	if e, ok := b.reports[r.Node]; ok && !load {
		r.Hosts = e.report.Hosts // for the view: the node's own load
	} else {
		b.reports[r.Node] = entry{at: now, report: r}
	}
	b.noteFreed(r.Freed, snap)
	b.learn(r.Completions, snap, now)
	finished := b.relayEnded(r, now)
	all := b.workByHost()
	b.notePeaks(all, now)
	// The view gives each worker the work the other Envoys have on it.
	remote := all
	if len(r.Hosts) > 0 {
		remote = maps.Clone(all)
		for _, h := range r.Hosts {
			c := remote[h.Addr]
			remote[h.Addr] = [2]int64{c[0] - h.Work, c[1] - h.Requests}
		}
	}
	v := b.view(snap, running, known, out, remote, now)
	v.Finished = finished
	return v, nil
}

// running is the registry as the Envoys run it, and whether that is known
// (see applied); without xDS, snap itself.
func (b *Board) running(snap registry.Snapshot) (registry.Snapshot, bool) {
	if b.applied == nil {
		return snap, true
	}
	return b.applied.get()
}

// workByHost sums the live reports' [work, requests] by worker; b.mu is
// held.
func (b *Board) workByHost() map[string][2]int64 {
	out := map[string][2]int64{}
	for _, e := range b.reports {
		for _, h := range e.report.Hosts {
			c := out[h.Addr]
			out[h.Addr] = [2]int64{c[0] + h.Work, c[1] + h.Requests}
		}
	}
	return out
}

// view lists the workers of snap a request may go to (active, awake, not
// out by Envoy's word, and run so by every Envoy), each with the work
// given for it; b.mu is held.
func (b *Board) view(snap, running registry.Snapshot, known bool, out func(key string) bool, work map[string][2]int64, now time.Time) wire.PickView {
	typical := b.speeds.Typical()
	suspect := b.noteSuspects(now)
	v := wire.PickView{Generation: snap.Generation, Workers: []wire.PickWorker{}, Envoys: len(b.reports), Base: b.speeds.Fit.Base,
		Ejection: b.ejection}
	for _, w := range snap.Workers {
		if !w.Routable() || out(w.Key()) || !known || !runs(running, w) {
			continue
		}
		if _, ok := suspect[Addr(w)]; ok {
			continue // a request on it runs far past its time: it may hang
		}
		v.Workers = append(v.Workers, b.viewWorker(w, work[Addr(w)], now, typical))
	}
	return v
}

// viewWorker is a worker as a view lists it, with work [work, requests]
// on it; b.mu is held.
func (b *Board) viewWorker(w registry.Worker, work [2]int64, now time.Time, typical float64) wire.PickWorker {
	a := Addr(w)
	pw := wire.PickWorker{Addr: a, Version: w.WeightVersion, Video: w.Caps.Video(), Image: w.Caps.Image(),
		Models: w.Caps.ModelIDs, RemoteWork: work[0], RemoteRequests: work[1], Slots: w.Slots}
	if wd, ok := b.words[a]; ok && now.Sub(wd.at) <= wordFresh {
		held := wd.queued + wd.running
		pw.ForeignRequests = min(wd.excess, wd.prevExcess, max(0, held-b.recentlyCounted(a, now)), maxForeign)
		if held == 0 {
			pw.IdleAt = wd.at.UnixMicro()
		}
	}
	if h := b.speeds.Find(a); h != nil && h.Samples > 0 && !(b.speeds.Stale(h) && h.MsPerCost > typical) {
		// A slow estimate many completions old is not passed on: the
		// filters take the worker as typical, send it work and so
		// measure it again (it may have recovered, or been replaced
		// behind the same address).
		pw.MsPerCost = h.MsPerCost
	}
	return pw
}

// FleetView is the view of the whole fleet for the router-owned queue:
// every worker a request may go to now (as in a filter's view), with the
// work and requests every live Envoy counts on it.
func (b *Board) FleetView(snap registry.Snapshot, out func(key string) bool) wire.PickView {
	running, known := b.running(snap)
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.expire(now)
	v := b.view(snap, running, known, out, b.workByHost(), now)
	failing := map[string]bool{}
	for _, e := range b.reports {
		for _, h := range e.report.Hosts {
			if h.Failing {
				failing[h.Addr] = true
			}
		}
	}
	if len(failing) > 0 {
		// A worker an Envoy just saw fail in a row is granted nothing
		// until that Envoy's next report clears it (or Envoy ejects it).
		v.Workers = slices.DeleteFunc(v.Workers, func(w wire.PickWorker) bool { return failing[w.Addr] })
	}
	return v
}

// noteFreed counts the ends a report says; b.mu is held. The counts stay
// about as many as the fleet's workers: past that (workers came and went)
// they start over, which the queue reads as no end.
func (b *Board) noteFreed(freed []string, snap registry.Snapshot) {
	if len(freed) == 0 {
		return
	}
	if len(b.freed) > 2*len(snap.Workers)+16 {
		clear(b.freed)
	}
	for _, a := range freed {
		b.freed[a]++
	}
}

// Freed is how many ends of requests on the worker at addr the reports
// have said so far (a count that only grows, but for a reset to 0 when
// the fleet changed a lot; the queue reads its changes).
func (b *Board) Freed(addr string) uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.freed[addr]
}

// ReportedAt is when an Envoy's latest load report arrived (zero: none
// live).
func (b *Board) ReportedAt(node string) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.reports[node].at
}

// relayEnded records the jobs r saw end and returns those the other
// Envoys saw end within aliveFor (the newest leastwork.MaxFinished): each
// Envoy syncs at least once in that time; b.mu is held.
func (b *Board) relayEnded(r wire.LoadReport, now time.Time) []wire.EndedJob {
	b.ended = slices.DeleteFunc(b.ended, func(e endedJob) bool { return now.Sub(e.at) > aliveFor })
	for _, j := range r.Finished {
		b.ended = append(b.ended, endedJob{node: r.Node, job: j, at: now})
	}
	if n := len(b.ended) - MaxNodes*leastwork.MaxFinished; n > 0 {
		b.ended = slices.Delete(b.ended, 0, n)
	}
	var out []wire.EndedJob
	for i := len(b.ended) - 1; i >= 0 && len(out) < leastwork.MaxFinished; i-- {
		if e := b.ended[i]; e.node != r.Node {
			out = append(out, e.job)
		}
	}
	return out
}

// learn merges completions into the fleet-wide speed estimate, in the
// order the workers answered them; b.mu is held.
func (b *Board) learn(cs []wire.Completion, snap registry.Snapshot, now time.Time) {
	// A completion from the future (a clock far off, or a forged report)
	// would move the merge cut ahead and let later ones in out of order.
	limit := now.Add(clockSlack).UnixMicro()
	for _, c := range cs {
		if c.Done > limit {
			continue
		}
		if c.GPU {
			// The worker's own measure: nothing to merge.
			b.speeds.Teach(c.Addr, c.Cost, float64(c.Done-c.Sent)/1000)
			continue
		}
		b.maxDone = max(b.maxDone, c.Done)
		b.pending = append(b.pending, c)
	}
	if over := len(b.pending) - maxPending; over > 0 {
		b.pending = b.pending[over:]
	}
	slices.SortStableFunc(b.pending, func(x, y wire.Completion) int { return cmp.Compare(x.Done, y.Done) })
	cut := b.maxDone - mergeWindow.Microseconds()
	n := 0
	for n < len(b.pending) && b.pending[n].Done <= cut {
		c := b.pending[n]
		b.speeds.Add(c.Addr, c.Cost)
		b.speeds.Done(c.Addr, c.Cost, c.Sent, c.Done, true)
		n++
	}
	b.pending = b.pending[n:]
	// A worker quarantined or (re)joining is forgotten: when it comes
	// back it starts from the fleet's typical speed, not its old one.
	listed := make(map[string]bool, len(snap.Workers))
	for _, w := range snap.Workers {
		if w.State != registry.StateQuarantined && w.State != registry.StatePending {
			listed[Addr(w)] = true
		}
	}
	b.speeds.Forget(func(a string) bool { return listed[a] })
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
	// MsPerCost is the worker's speed learned from every Envoy's
	// completions (0: none yet).
	MsPerCost float64
	Envoys    int
	// Word is the worker's own fresh reading, if it serves one.
	Word *Word
}

// Word is a worker's reading of its scheduler.
type Word struct {
	Queued, Running int64
}

// Hosts sums the live reports by worker address.
func (b *Board) Hosts() map[string]HostLoad {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.expire(b.now())
	out := map[string]HostLoad{}
	for _, e := range b.reports {
		for _, h := range e.report.Hosts {
			l := out[h.Addr]
			l.Work += h.Work
			l.Requests += h.Requests
			l.Envoys++
			out[h.Addr] = l
		}
	}
	for _, h := range b.speeds.Hosts {
		if h.Samples > 0 {
			l := out[h.Addr]
			l.MsPerCost = h.MsPerCost
			out[h.Addr] = l
		}
	}
	now := b.now()
	for a, w := range b.words {
		if now.Sub(w.at) <= wordFresh {
			l := out[a]
			l.Word = &Word{Queued: w.queued, Running: w.running}
			out[a] = l
		}
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
