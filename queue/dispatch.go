package queue

import (
	"slices"
	"time"

	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/wire"
)

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
	d := q.survey(f)
	if !f.Paused {
		q.refuseUnservable(d)
	}
	granted := 0
	for d.nopen > 0 {
		w, choice := q.next(d)
		if w == nil {
			break
		}
		q.grant(d, w, choice)
		granted++
	}
	q.planWake(d)
	return granted
}

// dispatch is the fleet as one Dispatch sees it, and its scratch space.
type dispatch struct {
	f   Fleet
	v   wire.PickView // f.View with the unreported grants counted
	now time.Time
	// open: the worker can take a request now, at a free slot or ahead;
	// nopen counts them.
	open  []bool
	nopen int
	// serves caches, by kind, the workers the serving rules leave.
	serves map[eligibleKey][]int
	// The eligibility rules (eligible.go), listed once per dispatch.
	servingRules, nowRules []rule
	// closing are the versions an update is about to take away.
	closing []string
	empty   leastwork.Table
	// Scratch: the candidates of one request, and samples of them.
	cands, sample, sampleAll []int
}

// eligibleKey names a candidate list: what the serving rules read.
type eligibleKey struct {
	pool                leastwork.Pool
	model               string
	version, minVersion string
	fresh               bool // a group's request before its group has a version
}

func (d *dispatch) slots(i int) int64 {
	if n := d.v.Workers[i].Slots; n > 0 {
		return int64(n)
	}
	return int64(max(d.f.DefaultSlots, 1))
}

func (d *dispatch) busy(i int) int64 {
	return d.v.Workers[i].RemoteRequests + d.v.Workers[i].ForeignRequests
}

// survey is a dispatch's first step: the fleet with the grants no report
// counts yet, the ends reported since the last dispatch, and which
// workers are open; q.mu is held.
func (q *Queue) survey(f Fleet) *dispatch {
	d := &dispatch{f: f, v: f.View, now: q.opts.Now(), serves: map[eligibleKey][]int{},
		servingRules: servingRules(), nowRules: nowRules(), closing: q.closing}
	d.v.Workers = slices.Clone(d.v.Workers)
	q.countGrants(&d.v, f, d.now)
	q.forgetDues(d.v)
	if q.opts.Ahead > 0 && f.Freed != nil {
		for _, w := range d.v.Workers {
			q.ended(w.Addr, f.Freed(w.Addr), d.now)
		}
	}
	d.open = make([]bool, len(d.v.Workers))
	for i := range d.v.Workers {
		if d.open[i] = q.opens(d, i); d.open[i] {
			d.nopen++
		}
	}
	return d
}

// opens reports whether worker i can take a request now: a free slot, or
// its running request about to end (granting ahead); q.mu is held.
func (q *Queue) opens(d *dispatch, i int) bool {
	return d.busy(i) < d.slots(i) || q.ahead(d.v.Workers[i].Addr, d.busy(i), d.slots(i), d.now)
}

// refuseUnservable answers ErrNoWorker to the waiting requests (of the
// first scanLimit) that no worker in the view could ever take: with no
// worker of its kind in rotation, a request would wait forever where,
// without the queue, Envoy answers 503 at once. q.mu is held.
func (q *Queue) refuseUnservable(d *dispatch) {
	var none []*waiter
	q.each(scanLimit, func(x *waiter) bool {
		r := q.effective(&x.Request)
		if len(d.serving(r)) == 0 && !versionSoon(d, r) {
			none = append(none, x)
		}
		return true
	})
	for _, w := range none {
		r := q.effective(&w.Request)
		err := ErrNoWorker
		if versioned(r) && len(d.servingKind(r)) > 0 {
			err = versionRefusal(d, r, w.Request.Version == "" && r.Version != "")
			q.stats.RuleRefused++
		}
		q.unlink(w)
		q.stats.Refused++
		w.done <- result{err: err}
	}
}

// waitForBetter: a request waits for a busy worker only when that one would
// finish it this much sooner than the best free one.
const waitForBetter = 0.25

// next is the first waiting request, in order, that an open worker can
// take and should, and its worker: a request whose kind (or named model)
// no open worker serves waits while later ones go on, and so does one
// that a busy worker would finish clearly sooner than any open one (a
// long request waits for a fast worker rather than take a slow one that
// happens to be free). q.mu is held.
func (q *Queue) next(d *dispatch) (*waiter, leastwork.Choice) {
	var w *waiter
	var choice leastwork.Choice
	q.each(q.scan(), func(x *waiter) bool {
		r := q.effective(&x.Request)
		all := d.serving(r)
		cands := d.takingNow(r, all)
		if len(cands) == 0 {
			return true
		}
		q.rot++
		d.sample = leastwork.Sample(d.sample, cands, &q.rnd)
		c, ok := leastwork.Choose(&d.v, d.sample, &d.empty, max(x.Cost, 1), q.rot, d.now.UnixMicro())
		if !ok || len(all) > len(cands) && q.betterBusy(d, all, x, c) {
			return true
		}
		w, choice = x, c
		return false
	})
	return w, choice
}

// betterBusy reports whether a worker that cannot take x now would finish
// it clearly sooner than c, the best that can; q.mu is held.
func (q *Queue) betterBusy(d *dispatch, all []int, x *waiter, c leastwork.Choice) bool {
	d.sampleAll = leastwork.Sample(d.sampleAll, all, &q.rnd)
	best, ok := leastwork.Choose(&d.v, d.sampleAll, &d.empty, max(x.Cost, 1), q.rot, d.now.UnixMicro())
	return ok && best.First != c.First && best.Expected*(1+waitForBetter) < c.Expected && !isOpen(d, d.sampleAll, best.First)
}

// isOpen reports whether the worker at addr, among the candidates, can
// take a request now.
func isOpen(d *dispatch, cands []int, addr string) bool {
	for _, i := range cands {
		if d.v.Workers[i].Addr == addr {
			return d.open[i]
		}
	}
	return false
}

// grant sends w to its worker and counts it there for the rest of the
// dispatch; q.mu is held.
func (q *Queue) grant(d *dispatch, w *waiter, choice leastwork.Choice) {
	if versioned(&w.Request) || w.Group != "" {
		q.stats.RuleGranted++
	}
	q.unlink(w)
	q.stats.Granted++
	if q.opts.Granted != nil {
		q.opts.Granted(w.Request, choice.First, d.now.Sub(w.at))
	}
	w.done <- result{grant: Grant{Worker: choice.First, Second: choice.Second}}
	q.charge(w)
	for _, i := range d.sample {
		if d.v.Workers[i].Addr != choice.First {
			continue
		}
		if w.Group != "" {
			q.fixGroup(w.Group, d.v.Workers[i].Version)
		}
		g := grant{node: w.Node, ticket: w.Ticket, addr: choice.First, cost: w.Cost, at: d.now, before: d.busy(i)}
		if d.f.Freed != nil {
			g.freed = d.f.Freed(g.addr)
		}
		q.grants = append(q.grants, g)
		q.plan(d.v.Workers[i].Addr, d.busy(i), d.slots(i), leastwork.Alone(&d.v, i, w.Cost), d.now)
		d.v.Workers[i].RemoteWork += w.Cost
		d.v.Workers[i].RemoteRequests++
		if d.open[i] && !q.opens(d, i) {
			d.open[i] = false
			d.nopen--
		}
	}
}
