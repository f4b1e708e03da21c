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
//
// Where each part lives: the order in order.go (bands, arrival) with the
// fairness between tenants as a rule of its own (share.go); which workers
// a request may take as a list of rules (eligible.go: kind.go, open.go);
// a dispatch's steps in dispatch.go; grants no report counts yet in
// grants.go; granting ahead in ahead.go; GET /queue in status.go.
package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	// ErrNoWorker: no worker of the request's kind is in rotation, and
	// none is held out for a while (an update, a sleep the queue waits
	// out): the request is answered as without the queue.
	ErrNoWorker = errors.New("no worker of this kind is in rotation")
	// ErrVersion: no worker holds the weight version the request names
	// (or a later one, for a minimum), and no update under way brings
	// one: answered 409.
	ErrVersion = errors.New("no worker holds the weight version the request names, and no update under way brings it")
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
	// Version and MinVersion are its weight-version rules ("": none;
	// version.go); Group names its group (group.go: the group's requests
	// share the weight version its first grant had).
	Version, MinVersion, Group string
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
	// History is the fleet's weight versions in the order it first had
	// them; Updating the version an update under way moves to ("": none).
	// The version rules read them (version.go).
	History  []string
	Updating string
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
	// MaxTenants bounds the tenants with requests waiting (a new name
	// over it waits in the lane OthersTenant, shared by all such) and the
	// tenants the fairness rule remembers.
	MaxTenants int
	// TenantIdle forgets a tenant with nothing waiting and no grant for
	// this long (0: only when over MaxTenants): GET /queue shows the
	// active ones.
	TenantIdle time.Duration
	// GroupIdle forgets a group with nothing waiting and no grant for
	// this long (0: DefaultGroupIdle); MaxGroups bounds the groups
	// remembered (0: DefaultMaxGroups).
	GroupIdle time.Duration
	MaxGroups int
	Now       func() time.Time
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
	DefaultMaxTenants = 256
	// OthersTenant is the lane of tenants over Options.MaxTenants; no
	// client can name it (it is not a valid tenant name).
	OthersTenant = "~others"
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

// Queue is the router-owned queue. Its methods are safe for concurrent use.
type Queue struct {
	opts Options

	mu      sync.Mutex
	bands   []*band // by priority, highest first
	byKey   map[Key]*waiter
	waiting int
	perTen  map[string]int
	// fair orders the tenants within a band (share.go).
	fair   fairness
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
	// forgotAt is when idle tenants were last looked for (forgetIdle).
	forgotAt time.Time
	// groups are the open groups (group.go); groupsForgotAt when idle
	// ones were last looked for.
	groups         map[string]*group
	groupsForgotAt time.Time
	// closing are the versions an update is about to take away (Closing).
	closing []string
	kick    chan struct{}
	rot     int
	rnd     uint64
}

// Stats are the queue's counters since start.
type Stats struct {
	Granted, Refused, Cancelled, TimedOut uint64
	// RuleGranted and RuleRefused count requests with weight-version
	// rules (a pinned or minimum version, a group) granted, and refused
	// for their rules (ErrVersion; also counted in Refused).
	RuleGranted, RuleRefused uint64
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
	if o.GroupIdle <= 0 {
		o.GroupIdle = DefaultGroupIdle
	}
	if o.MaxGroups <= 0 {
		o.MaxGroups = DefaultMaxGroups
	}
	return &Queue{opts: o, byKey: map[Key]*waiter{}, perTen: map[string]int{}, fair: newShares(o.Weights, o.MaxTenants),
		dues: map[string][]due{}, seen: map[string]uint64{}, kick: make(chan struct{}, 1), groups: map[string]*group{}}
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
// A refusal (ErrFull, ErrTenantFull, ErrDuplicate) returns at once.
func (q *Queue) Wait(ctx context.Context, r Request) (Grant, error) {
	e, err := q.Enter(r)
	if err != nil {
		return Grant{}, err
	}
	return e.Wait(ctx)
}

// Entry is a request in the queue, entered apart from its wait: a caller
// that must know its requests entered in order (package heldjobs) enters
// them one by one and waits for each elsewhere.
type Entry struct {
	q *Queue
	w *waiter
}

// Enter queues r; a refusal (ErrFull, ErrTenantFull, ErrDuplicate)
// returns at once.
func (q *Queue) Enter(r Request) (*Entry, error) {
	w, err := q.add(r)
	if err != nil {
		return nil, err
	}
	q.Kick()
	return &Entry{q: q, w: w}, nil
}

// Wait is Queue.Wait for an entered request; call it once.
func (e *Entry) Wait(ctx context.Context) (Grant, error) {
	q, w := e.q, e.w
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
	q.forgetIdle()
	r.Tenant = q.lane(r.Tenant)
	if q.opts.MaxPerTenant > 0 && q.perTen[r.Tenant] >= q.opts.MaxPerTenant {
		q.stats.Refused++
		return nil, ErrTenantFull
	}
	if err := q.enterGroup(&r); err != nil {
		q.stats.Refused++
		q.stats.RuleRefused++
		return nil, err
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
		t.key = q.fair.enter(r.Tenant, b.leastKey(t))
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

// unlink drops w from its tenant, band and group; q.mu is held.
func (q *Queue) unlink(w *waiter) {
	w.gone = true
	if w.Group != "" {
		q.leaveGroup(&w.Request)
	}
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
