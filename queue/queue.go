// Package queue is the router-owned queue: requests wait here, in the
// control plane, for a free slot on a worker instead of inside a worker
// that was chosen when they arrived. One queue serves every Envoy, so
// order, priorities and shares hold across replicas.
//
// Order: higher priority first; within a priority, the tenant that has
// been served the least GPU time (the cost estimates of its granted
// requests) divided by its weight; within a tenant, arrival order. A
// request is granted the best free worker for it then (least-work's
// estimate), so binding happens as late as possible.
package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/wire"
)

// Refusals: a request the queue did not take, or gave up on. Each says
// the request never reached a worker.
var (
	ErrFull       = errors.New("the router's queue is full (--max-queued)")
	ErrTenantFull = errors.New("this tenant's share of the router's queue is full (--max-queued-per-tenant)")
	ErrTimeout    = errors.New("waited in the router's queue past --queue-timeout; the request never started")
	ErrCancelled  = errors.New("cancelled while queued; the request never started")
	ErrDuplicate  = errors.New("a request with this ticket is already queued")
	ErrTooMany    = errors.New("too many tenants are queued at once")
	// ErrNoWorker: no worker of the request's kind is in rotation, and
	// none is held out for a while (an update, a sleep the queue waits
	// out): the request is answered as without the queue.
	ErrNoWorker = errors.New("no worker of this kind is in rotation")
)

// Key names a queued request: the Envoy that holds it and its ticket there.
type Key struct {
	Node, Ticket string
}

// Request is a request asking for a worker.
type Request struct {
	Key
	Priority int
	Tenant   string
	Cost     int64
	Pool     leastwork.Pool
	Model    string
}

// Grant is the worker a request goes to, and the next best for a retry.
type Grant struct {
	Worker string `json:"worker"`
	Second string `json:"second,omitempty"`
}

// Fleet is the workers as the queue sees them: every eligible worker with
// the work and requests all Envoys have on it (wire.PickView's Remote
// fields), and how many requests each runs at once.
type Fleet struct {
	// View's workers carry their own slots (wire.PickWorker.Slots, 0:
	// DefaultSlots).
	View         wire.PickView
	DefaultSlots int
	// ReportedAt is when an Envoy's latest load report arrived (zero: none).
	ReportedAt func(node string) time.Time
	// Paused: workers are out of rotation only for a while (an in-place
	// update loading, a sleep the queue waits out), so a request none can
	// take waits for them rather than being answered ErrNoWorker.
	Paused bool
	// Freed, if set, counts the ends of requests the Envoys reported on
	// a worker so far (wire.LoadReport.Freed): Options.Ahead plans from
	// when a worker's request really ended.
	Freed func(addr string) uint64
}

// Options configure a queue.
type Options struct {
	// MaxQueued bounds the requests waiting; MaxPerTenant (0: none) one
	// tenant's.
	MaxQueued, MaxPerTenant int
	// Timeout bounds a request's wait (0: none).
	Timeout time.Duration
	// Weights are tenants' shares (default 1).
	Weights map[string]float64
	// MaxTenants bounds the tenants remembered (those with requests
	// waiting always are).
	MaxTenants int
	Now        func() time.Time
	// Granted, if set, is told of each grant: the request, its worker
	// and how long it waited (metrics, logs). It runs under the queue's
	// lock: it must not call the queue.
	Granted func(r Request, worker string, waited time.Duration)
	// Ahead (0: off) grants a full worker its next request this long
	// before its running one is expected to end, so the grant's round
	// trip (answer, report, grant, resume, send) overlaps the end of the
	// running request instead of leaving the worker idle. At most one
	// request per worker is bound ahead, and only while the running one
	// is not overdue by more than its own expected duration (a worker
	// much slower than its estimate gets nothing bound early).
	Ahead time.Duration
}

// Defaults.
const (
	DefaultMaxQueued  = 10000
	DefaultMaxTenants = 4096
	// scanLimit bounds the waiting requests one grant looks through for
	// one a free worker can take (a video request waits for a video
	// worker while images go on).
	scanLimit = 256
	// reflectAfter: a grant counts on its worker until the Envoy that
	// holds it reports this long after it (its report then counts it).
	reflectAfter = 20 * time.Millisecond
	// grantTTL bounds how long an unreported grant counts (a silent
	// Envoy's view expires sooner).
	grantTTL = wire.ViewTTL
)

// waiter is one queued request.
type waiter struct {
	Request
	at   time.Time
	seq  uint64
	done chan result // buffered: the granting side never blocks
	gone bool
}

type result struct {
	grant Grant
	err   error
}

// tenant is one tenant's state in one priority band.
type tenant struct {
	name string
	// fifo[head:] holds its requests in arrival order; a request that
	// left from the middle (cancelled) stays, marked gone, until the head
	// passes it, so every removal costs O(1).
	fifo []*waiter
	head int
	live int
	// vtime is the tenant's served cost over its weight, as of when it
	// last had requests waiting (start-time fair queueing).
	vtime float64
}

// next returns the first live request at or after fifo index from, and the
// index after it (nil at the end).
func (t *tenant) next(from int) (*waiter, int) {
	for i := max(from, t.head); i < len(t.fifo); i++ {
		if !t.fifo[i].gone {
			return t.fifo[i], i + 1
		}
	}
	return nil, len(t.fifo)
}

// drop notes that a request left; the head moves past the gone ones, and
// the slice is compacted once mostly gone.
func (t *tenant) drop() {
	t.live--
	for t.head < len(t.fifo) && t.fifo[t.head].gone {
		t.fifo[t.head] = nil
		t.head++
	}
	if t.head > 64 && t.head > len(t.fifo)/2 {
		t.fifo = append(t.fifo[:0], t.fifo[t.head:]...)
		t.head = 0
	}
}

// band is one priority's waiting requests, by tenant.
type band struct {
	priority int
	tenants  map[string]*tenant
}

type grant struct {
	node, addr string
	cost       int64
	at         time.Time
	// freed is the worker's count of reported ends (Fleet.Freed) when
	// granted, and before the requests it ran then: once more than
	// before further ends are reported, this one ended too (a worker runs
	// its requests in order), however soon.
	freed  uint64
	before int64
}

// due is when a granted request is expected to end, and how long it was
// expected to take.
type due struct {
	at  time.Time
	dur time.Duration
	// next: a request was granted ahead to follow this one on its slot;
	// at and dur are then that request's (estimated from this one's end
	// until the end is seen).
	next bool
}

// Queue is the router-owned queue. Its methods are safe for concurrent use.
type Queue struct {
	opts Options

	mu      sync.Mutex
	bands   []*band // by priority, highest first
	byKey   map[Key]*waiter
	waiting int
	perTen  map[string]int
	// served is each tenant's granted cost over its weight, across bands
	// (bounded: MaxTenants).
	served map[string]float64
	seq    uint64
	grants []grant
	// dues are each worker's running requests' expected ends, latest
	// grants last (at most its slots; for Options.Ahead).
	dues map[string][]due
	// seen is each worker's count of reported ends (Fleet.Freed) at the
	// last dispatch.
	seen map[string]uint64
	// wake is when a full worker is next due to take a request ahead
	// (zero: none); Run dispatches then.
	wake  time.Time
	stats Stats
	kick  chan struct{}
	rot   int
	rnd   uint64
}

// Stats are the queue's counters since start.
type Stats struct {
	Granted, Refused, Cancelled, TimedOut uint64
}

// New returns an empty queue.
func New(o Options) *Queue {
	if o.MaxQueued <= 0 {
		o.MaxQueued = DefaultMaxQueued
	}
	if o.MaxTenants <= 0 {
		o.MaxTenants = DefaultMaxTenants
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Queue{opts: o, byKey: map[Key]*waiter{}, perTen: map[string]int{}, served: map[string]float64{},
		dues: map[string][]due{}, seen: map[string]uint64{}, kick: make(chan struct{}, 1)}
}

// Kick wakes Run to dispatch: the queue or the fleet changed (a request
// arrived, an Envoy reported).
func (q *Queue) Kick() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// Waiting counts the requests waiting.
func (q *Queue) Waiting() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.waiting
}

// Wait queues r and blocks until it is granted a worker, its wait passes
// the timeout (ErrTimeout), it is cancelled (ErrCancelled) or ctx ends.
// A refusal (ErrFull, ErrTenantFull, ErrDuplicate, ErrTooMany) returns at
// once.
func (q *Queue) Wait(ctx context.Context, r Request) (Grant, error) {
	w, err := q.add(r)
	if err != nil {
		return Grant{}, err
	}
	q.Kick()
	var timeout <-chan time.Time
	if q.opts.Timeout > 0 {
		t := time.NewTimer(q.opts.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case res := <-w.done:
		return res.grant, res.err
	case <-timeout:
		if q.remove(w, &q.stats.TimedOut) {
			return Grant{}, ErrTimeout
		}
	case <-ctx.Done():
		if q.remove(w, &q.stats.Cancelled) {
			return Grant{}, fmt.Errorf("%w: %w", ErrCancelled, ctx.Err())
		}
	}
	// Granted meanwhile: the grant stands.
	res := <-w.done
	return res.grant, res.err
}

// Cancel takes a waiting request out (its client left). It reports whether
// the request was waiting.
func (q *Queue) Cancel(k Key) bool {
	q.mu.Lock()
	w, ok := q.byKey[k]
	q.mu.Unlock()
	if !ok {
		return false
	}
	if q.remove(w, &q.stats.Cancelled) {
		w.done <- result{err: ErrCancelled}
		return true
	}
	return false
}

func (q *Queue) add(r Request) (*waiter, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, dup := q.byKey[r.Key]; dup {
		q.stats.Refused++
		return nil, ErrDuplicate
	}
	if q.waiting >= q.opts.MaxQueued {
		q.stats.Refused++
		return nil, ErrFull
	}
	if q.opts.MaxPerTenant > 0 && q.perTen[r.Tenant] >= q.opts.MaxPerTenant {
		q.stats.Refused++
		return nil, ErrTenantFull
	}
	if _, known := q.served[r.Tenant]; !known && q.perTen[r.Tenant] == 0 && len(q.perTen) >= q.opts.MaxTenants {
		q.stats.Refused++
		return nil, ErrTooMany
	}
	b := q.band(r.Priority)
	t, ok := b.tenants[r.Tenant]
	if !ok {
		t = &tenant{name: r.Tenant}
		b.tenants[r.Tenant] = t
	}
	if t.live == 0 {
		// A tenant that comes back does not bring credit from its idle
		// time: it starts level with the least served tenant waiting.
		t.vtime = max(q.served[r.Tenant], b.minVtime(t))
	}
	q.seq++
	w := &waiter{Request: r, at: q.opts.Now(), seq: q.seq, done: make(chan result, 1)}
	t.fifo = append(t.fifo, w)
	t.live++
	q.byKey[r.Key] = w
	q.waiting++
	q.perTen[r.Tenant]++
	return w, nil
}

// band returns the band of a priority, adding it; q.mu is held.
func (q *Queue) band(p int) *band {
	i := sort.Search(len(q.bands), func(i int) bool { return q.bands[i].priority <= p })
	if i < len(q.bands) && q.bands[i].priority == p {
		return q.bands[i]
	}
	b := &band{priority: p, tenants: map[string]*tenant{}}
	q.bands = slices.Insert(q.bands, i, b)
	return b
}

// minVtime is the least virtual time of the band's other waiting tenants
// (0 with none).
func (b *band) minVtime(except *tenant) float64 {
	low, any := 0.0, false
	for _, t := range b.tenants {
		if t != except && t.live > 0 && (!any || t.vtime < low) {
			low, any = t.vtime, true
		}
	}
	return low
}

// remove takes w out if it still waits, counting it in c; it reports
// whether it did (false: granted or removed already).
func (q *Queue) remove(w *waiter, c *uint64) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if w.gone {
		return false
	}
	q.unlink(w)
	*c++
	return true
}

// unlink drops w from its tenant and band; q.mu is held.
func (q *Queue) unlink(w *waiter) {
	w.gone = true
	delete(q.byKey, w.Key)
	q.waiting--
	if q.perTen[w.Tenant]--; q.perTen[w.Tenant] <= 0 {
		delete(q.perTen, w.Tenant)
	}
	for bi, b := range q.bands {
		if b.priority != w.Priority {
			continue
		}
		t := b.tenants[w.Tenant]
		if t == nil {
			return
		}
		t.drop()
		if t.live == 0 {
			delete(b.tenants, w.Tenant)
		}
		if len(b.tenants) == 0 {
			q.bands = slices.Delete(q.bands, bi, bi+1)
		}
		return
	}
}

// each visits waiting requests in the order they are served until visit
// returns false or limit were visited; q.mu is held. Within a band,
// tenants take turns by virtual time: the next request is always the
// least-served tenant's oldest, and granting it advances that tenant's
// time. The turns are simulated lazily, so visiting the first costs one
// pass over the band's tenants.
func (q *Queue) each(limit int, visit func(*waiter) bool) {
	type cursor struct {
		t     *tenant
		w     *waiter // the tenant's next request
		after int     // fifo index after w
		vtime float64
	}
	n := 0
	for _, b := range q.bands {
		cs := make([]cursor, 0, len(b.tenants))
		for _, t := range b.tenants {
			if w, after := t.next(0); w != nil {
				cs = append(cs, cursor{t: t, w: w, after: after, vtime: t.vtime})
			}
		}
		for len(cs) > 0 {
			bi := 0
			for i := 1; i < len(cs); i++ {
				if c, b := cs[i], cs[bi]; c.vtime < b.vtime || c.vtime == b.vtime && c.w.seq < b.w.seq {
					bi = i
				}
			}
			c := &cs[bi]
			w := c.w
			if n++; n > limit || !visit(w) {
				return
			}
			c.vtime += float64(max(w.Cost, 1)) / q.weight(w.Tenant)
			if c.w, c.after = c.t.next(c.after); c.w == nil {
				cs = slices.Delete(cs, bi, bi+1)
			}
		}
	}
}

func (q *Queue) weight(tenant string) float64 {
	if w, ok := q.opts.Weights[tenant]; ok && w > 0 {
		return w
	}
	return 1
}

// Dispatch grants free slots to waiting requests, in order, and returns
// how many it granted. A request no free worker can take (none of its
// kind is free) waits while later ones go on. With Options.Ahead, a full
// worker whose running request is about to end counts as free for one
// more.
func (q *Queue) Dispatch(f Fleet) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.wake = time.Time{}
	if q.waiting == 0 {
		return 0
	}
	now := q.opts.Now()
	v := f.View
	v.Workers = slices.Clone(v.Workers)
	q.countGrants(&v, f, now)
	q.forgetDues(v)
	var empty leastwork.Table
	slots := func(i int) int64 {
		if n := v.Workers[i].Slots; n > 0 {
			return int64(n)
		}
		return int64(max(f.DefaultSlots, 1))
	}
	busy := func(i int) int64 { return v.Workers[i].RemoteRequests + v.Workers[i].ForeignRequests }
	if q.opts.Ahead > 0 && f.Freed != nil {
		for _, w := range v.Workers {
			q.ended(w.Addr, f.Freed(w.Addr), now)
		}
	}
	// open: the worker can take a request now, at a free slot or ahead.
	open := make([]bool, len(v.Workers))
	nopen := 0
	for i := range v.Workers {
		if open[i] = busy(i) < slots(i) || q.ahead(v.Workers[i].Addr, busy(i), slots(i), now); open[i] {
			nopen++
		}
	}
	// eligible is the workers a request may go to, one list per kind.
	elig := map[eligibleKey][]int{}
	eligible := func(x *waiter) []int {
		k := eligibleKey{x.Pool, x.Model}
		all, ok := elig[k]
		if !ok {
			all = leastwork.Eligible(nil, &v, x.Pool, x.Model)
			elig[k] = all
		}
		return all
	}
	if !f.Paused {
		q.refuseUnservable(eligible)
	}
	granted := 0
	var cands, sample []int
	var all2 []int
	for nopen > 0 {
		// The first waiting request, in order, that an open worker can
		// take and should: a request whose kind (or named model) no open
		// worker serves waits while later ones go on, and so does one
		// that a busy worker would finish clearly sooner than any open
		// one (a long request waits for a fast worker rather than take a
		// slow one that happens to be free).
		var w *waiter
		var choice leastwork.Choice
		q.each(scanLimit, func(x *waiter) bool {
			all := eligible(x)
			cands = cands[:0]
			for _, i := range all {
				if open[i] {
					cands = append(cands, i)
				}
			}
			if len(cands) == 0 {
				return true
			}
			q.rot++
			sample = leastwork.Sample(sample, cands, &q.rnd)
			c, ok := leastwork.Choose(&v, sample, &empty, max(x.Cost, 1), q.rot, now.UnixMicro())
			if !ok {
				return true
			}
			if len(all) > len(cands) {
				all2 = leastwork.Sample(all2, all, &q.rnd)
				if best, ok := leastwork.Choose(&v, all2, &empty, max(x.Cost, 1), q.rot, now.UnixMicro()); ok &&
					best.First != c.First && best.Expected*(1+waitForBetter) < c.Expected && !isOpen(v, open, all2, best.First) {
					return true
				}
			}
			w, choice = x, c
			return false
		})
		if w == nil {
			break
		}
		q.unlink(w)
		q.stats.Granted++
		if q.opts.Granted != nil {
			q.opts.Granted(w.Request, choice.First, now.Sub(w.at))
		}
		w.done <- result{grant: Grant{Worker: choice.First, Second: choice.Second}}
		q.charge(w)
		for _, i := range sample {
			if v.Workers[i].Addr != choice.First {
				continue
			}
			g := grant{node: w.Node, addr: choice.First, cost: w.Cost, at: now, before: busy(i)}
			if f.Freed != nil {
				g.freed = f.Freed(g.addr)
			}
			q.grants = append(q.grants, g)
			q.plan(v.Workers[i].Addr, busy(i), slots(i), leastwork.Alone(&v, i, w.Cost), now)
			v.Workers[i].RemoteWork += w.Cost
			v.Workers[i].RemoteRequests++
			if open[i] && busy(i) >= slots(i) && !q.ahead(v.Workers[i].Addr, busy(i), slots(i), now) {
				open[i] = false
				nopen--
			}
		}
		granted++
	}
	if q.waiting > 0 && q.opts.Ahead > 0 {
		// When a full worker next comes due: Run dispatches then.
		for i, w := range v.Workers {
			if busy(i) != slots(i) {
				continue
			}
			if d := q.dues[w.Addr]; int64(len(d)) >= slots(i) {
				at := earliest(d).at.Add(-q.opts.Ahead)
				if at.After(now) && (q.wake.IsZero() || at.Before(q.wake)) {
					q.wake = at
				}
			}
		}
	}
	return granted
}

// refuseUnservable answers ErrNoWorker to the waiting requests (of the
// first scanLimit) that no worker in the view could ever take: with no
// worker of its kind in rotation, a request would wait forever where,
// without the queue, Envoy answers 503 at once. q.mu is held.
func (q *Queue) refuseUnservable(eligible func(*waiter) []int) {
	var none []*waiter
	q.each(scanLimit, func(x *waiter) bool {
		if len(eligible(x)) == 0 {
			none = append(none, x)
		}
		return true
	})
	for _, w := range none {
		q.unlink(w)
		q.stats.Refused++
		w.done <- result{err: ErrNoWorker}
	}
}

// ahead reports whether a full worker (busy == slots) can take one more
// request now: its earliest running request is expected to end within
// Options.Ahead and is not overdue by more than its expected duration.
// q.mu is held.
func (q *Queue) ahead(addr string, busy, slots int64, now time.Time) bool {
	if q.opts.Ahead <= 0 || busy != slots {
		return false
	}
	d := q.dues[addr]
	if int64(len(d)) < slots {
		return false // what runs there was not granted here
	}
	e := earliest(d)
	return !now.Before(e.at.Add(-q.opts.Ahead)) && !now.After(e.at.Add(e.dur))
}

// plan notes when a request granted to a worker running busy requests is
// expected to end: at once plus its duration on a free slot, after the
// earliest running one when granted ahead. dur is 0 when the worker's
// speed is unknown, which leaves the worker unplanned. q.mu is held.
func (q *Queue) plan(addr string, busy, slots int64, ms float64, now time.Time) {
	if q.opts.Ahead <= 0 {
		return
	}
	if ms <= 0 {
		delete(q.dues, addr)
		return
	}
	dur := time.Duration(ms * float64(time.Millisecond))
	d := q.dues[addr]
	if busy >= slots && len(d) > 0 {
		// Granted ahead: it starts as the earliest running one ends.
		i := earliestIndex(d)
		d[i] = due{at: d[i].at.Add(dur), dur: dur, next: true}
		q.dues[addr] = d
		return
	}
	// A free slot: the busy requests running are the latest granted.
	if keep := int(max(busy, 0)); len(d) > keep {
		d = slices.Clone(d[len(d)-keep:])
	}
	q.dues[addr] = append(d, due{at: now.Add(dur), dur: dur})
}

// ended notes how many ends of requests the Envoys have reported on a
// worker: each new one ends its earliest due. A request granted ahead to
// follow it started then, so its end is planned again from now: a chain
// of estimates would drift from the worker's real pace by the estimate's
// error on every request. q.mu is held.
func (q *Queue) ended(addr string, count uint64, now time.Time) {
	prev, ok := q.seen[addr]
	q.seen[addr] = count
	if !ok || count <= prev {
		return // first seen, or the counts started over
	}
	d := q.dues[addr]
	for n := count - prev; n > 0 && len(d) > 0; n-- {
		i := earliestIndex(d)
		if d[i].next {
			d[i] = due{at: now.Add(d[i].dur), dur: d[i].dur}
		} else {
			d = slices.Delete(d, i, i+1)
		}
	}
	q.dues[addr] = d
}

// forgetDues drops the plans of workers no longer in the view; q.mu is
// held.
func (q *Queue) forgetDues(v wire.PickView) {
	if len(q.dues) <= len(v.Workers) && len(q.seen) <= len(v.Workers) {
		return
	}
	in := make(map[string]bool, len(v.Workers))
	for _, w := range v.Workers {
		in[w.Addr] = true
	}
	for a := range q.dues {
		if !in[a] {
			delete(q.dues, a)
		}
	}
	for a := range q.seen {
		if !in[a] {
			delete(q.seen, a)
		}
	}
}

func earliestIndex(d []due) int {
	k := 0
	for i := range d {
		if d[i].at.Before(d[k].at) {
			k = i
		}
	}
	return k
}

func earliest(d []due) due { return d[earliestIndex(d)] }

// waitForBetter: a request waits for a busy worker only when that one would
// finish it this much sooner than the best free one.
const waitForBetter = 0.25

// isOpen reports whether the worker at addr, among the candidates, can
// take a request now.
func isOpen(v wire.PickView, open []bool, cands []int, addr string) bool {
	for _, i := range cands {
		if v.Workers[i].Addr == addr {
			return open[i]
		}
	}
	return false
}

// eligibleKey names a candidate list.
type eligibleKey struct {
	pool  leastwork.Pool
	model string
}

// charge adds a granted request's cost to its tenant's service; q.mu is
// held.
func (q *Queue) charge(w *waiter) {
	d := float64(max(w.Cost, 1)) / q.weight(w.Tenant)
	q.served[w.Tenant] += d
	for _, b := range q.bands {
		if t := b.tenants[w.Tenant]; t != nil {
			t.vtime += d
		}
	}
	if len(q.served) > q.opts.MaxTenants {
		// Forget the tenants with nothing waiting, least served first.
		for name := range q.served {
			if len(q.served) <= q.opts.MaxTenants {
				break
			}
			if q.perTen[name] == 0 {
				delete(q.served, name)
			}
		}
	}
}

// countGrants adds the grants the Envoys have not reported yet to the
// view, and forgets the reported ones and those reported ended; q.mu is
// held.
func (q *Queue) countGrants(v *wire.PickView, f Fleet, now time.Time) {
	reportedAt := f.ReportedAt
	q.grants = slices.DeleteFunc(q.grants, func(g grant) bool {
		if now.Sub(g.at) > grantTTL {
			return true
		}
		if f.Freed != nil {
			// A request shorter than a report's round trip ends before
			// any report shows it: without this its worker would look
			// busy until the next regular sync.
			if n := f.Freed(g.addr); n >= g.freed && int64(n-g.freed) > g.before {
				return true
			}
		}
		if reportedAt != nil && !reportedAt(g.node).Before(g.at.Add(reflectAfter)) {
			return true // the Envoy's report counts it now
		}
		return false
	})
	if len(q.grants) == 0 {
		return
	}
	idx := make(map[string]int, len(v.Workers))
	for i, w := range v.Workers {
		idx[w.Addr] = i
	}
	for _, g := range q.grants {
		if i, ok := idx[g.addr]; ok {
			v.Workers[i].RemoteWork += g.cost
			v.Workers[i].RemoteRequests++
		}
	}
}

// Status is the queue as GET /queue shows it.
type Status struct {
	Waiting           int            `json:"waiting"`
	OldestWaitSeconds float64        `json:"oldest_wait_seconds"`
	Priorities        []BandStatus   `json:"priorities"`
	Tenants           []TenantStatus `json:"tenants"`
	// UnreportedGrants are grants no Envoy report counts yet.
	UnreportedGrants int    `json:"unreported_grants"`
	Granted          uint64 `json:"granted"`
	Refused          uint64 `json:"refused"`
	Cancelled        uint64 `json:"cancelled"`
	TimedOut         uint64 `json:"timed_out"`
}

// BandStatus is one priority's waiting requests by tenant.
type BandStatus struct {
	Priority int            `json:"priority"`
	Waiting  int            `json:"waiting"`
	Tenants  map[string]int `json:"tenants"`
}

// TenantStatus is one tenant: what waits, and the GPU time (cost
// estimate) it was served and its share of all served.
type TenantStatus struct {
	Tenant     string  `json:"tenant"`
	Weight     float64 `json:"weight"`
	Waiting    int     `json:"waiting"`
	ServedCost float64 `json:"served_cost"`
	Share      float64 `json:"share"`
}

// Status reports the queue.
func (q *Queue) Status() Status {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.opts.Now()
	s := Status{Waiting: q.waiting, Priorities: []BandStatus{}, Tenants: []TenantStatus{}, UnreportedGrants: len(q.grants),
		Granted: q.stats.Granted, Refused: q.stats.Refused, Cancelled: q.stats.Cancelled, TimedOut: q.stats.TimedOut}
	var oldest time.Time
	for _, b := range q.bands {
		bs := BandStatus{Priority: b.priority, Tenants: map[string]int{}}
		for name, t := range b.tenants {
			bs.Tenants[name] = t.live
			bs.Waiting += t.live
			if w, _ := t.next(0); w != nil && (oldest.IsZero() || w.at.Before(oldest)) {
				oldest = w.at
			}
		}
		s.Priorities = append(s.Priorities, bs)
	}
	if !oldest.IsZero() {
		s.OldestWaitSeconds = now.Sub(oldest).Seconds()
	}
	names := map[string]bool{}
	for n := range q.served {
		names[n] = true
	}
	for n := range q.perTen {
		names[n] = true
	}
	total := 0.0
	for n := range names {
		cost := q.served[n] * q.weight(n)
		total += cost
		s.Tenants = append(s.Tenants, TenantStatus{Tenant: n, Weight: q.weight(n), Waiting: q.perTen[n], ServedCost: cost})
	}
	for i := range s.Tenants {
		if total > 0 {
			s.Tenants[i].Share = s.Tenants[i].ServedCost / total
		}
	}
	slices.SortFunc(s.Tenants, func(a, b TenantStatus) int { return strings.Compare(a.Tenant, b.Tenant) })
	return s
}

// nextDue is when a full worker is next due a request ahead (zero: none).
func (q *Queue) nextDue() time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.wake
}

// Run dispatches until ctx ends: whenever the queue is kicked (a request
// arrived or left, an Envoy reported) and at least every tick while
// requests wait (a grant's report may be what frees a slot). fleet is
// read only when something waits.
func (q *Queue) Run(ctx context.Context, tick time.Duration, fleet func() Fleet) {
	t := time.NewTicker(tick)
	defer t.Stop()
	// due fires when a full worker is next due a request ahead, which a
	// tick would catch up to a tick late.
	due := time.NewTimer(time.Hour)
	defer due.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.kick:
		case <-t.C:
		case <-due.C:
		}
		if q.Waiting() > 0 {
			q.Dispatch(fleet())
		}
		if at := q.nextDue(); !at.IsZero() {
			due.Reset(max(time.Until(at), 0))
		}
	}
}
