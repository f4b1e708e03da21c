package queue

import (
	"slices"
	"sort"
	"time"
)

// The order in which waiting requests are served: priority bands first
// (the highest priority's band, then the next); within a band, the
// fairness between tenants chooses whose turn it is; within a tenant,
// arrival order.

// fairness orders the tenants of one priority band: the band serves the
// oldest request of the tenant with the least key (the earlier arrival on
// a tie), and granting a request moves its tenant's key on by step, in
// every band it waits in. Today's is the tenants' share (share.go); a
// rule that always answers 0 would serve a band in arrival order.
type fairness interface {
	// enter is the key of a tenant that starts waiting in a band, where
	// least is the least key of the others waiting there (0: none).
	enter(tenant string, least float64) float64
	// step is how far granting r moves its tenant's key.
	step(r *Request) float64
	// granted records r's grant at a time; waiting says whether a tenant
	// has requests waiting.
	granted(r *Request, at time.Time, waiting func(tenant string) bool)
	// forget drops the records of tenants with nothing waiting and no
	// grant since idleSince.
	forget(idleSince time.Time, waiting func(tenant string) bool)
	// status is every tenant the rule remembers or that waits, for
	// GET /queue.
	status(waiting map[string]int) []TenantStatus
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
	// key is the tenant's place in its band's turns (fairness).
	key float64
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

// leastKey is the least key of the band's other waiting tenants (0 with
// none).
func (b *band) leastKey(except *tenant) float64 {
	low, any := 0.0, false
	for _, t := range b.tenants {
		if t != except && t.live > 0 && (!any || t.key < low) {
			low, any = t.key, true
		}
	}
	return low
}

// each visits waiting requests in the order they are served until visit
// returns false or limit were visited; q.mu is held. Within a band,
// tenants take turns by their keys (fairness): the next request is always
// the oldest of the tenant with the least key, and granting it moves that
// tenant's key on. The turns are simulated lazily, so visiting the first
// costs one pass over the band's tenants.
func (q *Queue) each(limit int, visit func(*waiter) bool) {
	type cursor struct {
		t     *tenant
		w     *waiter // the tenant's next request
		after int     // fifo index after w
		key   float64
	}
	n := 0
	for _, b := range q.bands {
		cs := make([]cursor, 0, len(b.tenants))
		for _, t := range b.tenants {
			if w, after := t.next(0); w != nil {
				cs = append(cs, cursor{t: t, w: w, after: after, key: t.key})
			}
		}
		for len(cs) > 0 {
			bi := 0
			for i := 1; i < len(cs); i++ {
				if c, b := cs[i], cs[bi]; c.key < b.key || c.key == b.key && c.w.seq < b.w.seq {
					bi = i
				}
			}
			c := &cs[bi]
			w := c.w
			if n++; n > limit || !visit(w) {
				return
			}
			c.key += q.fair.step(&w.Request)
			if c.w, c.after = c.t.next(c.after); c.w == nil {
				cs = slices.Delete(cs, bi, bi+1)
			}
		}
	}
}

// charge moves a granted request's tenant on in every band; q.mu is held.
func (q *Queue) charge(w *waiter) {
	d := q.fair.step(&w.Request)
	for _, b := range q.bands {
		if t := b.tenants[w.Tenant]; t != nil {
			t.key += d
		}
	}
	q.fair.granted(&w.Request, q.opts.Now(), q.tenantWaits)
}

// tenantWaits reports whether a tenant has requests waiting; q.mu is held.
func (q *Queue) tenantWaits(name string) bool { return q.perTen[name] > 0 }

// lane is the tenant a request waits as: its own, or, when Options.
// MaxTenants others already have requests waiting, OthersTenant, one lane
// shared by every name over the bound (so a client naming a thousand
// tenants at once gets one share, not a thousand). Remembered tenants
// with nothing waiting never hold a new name out: the fairness rule's
// memory is bounded on its own; q.mu is held.
func (q *Queue) lane(tenant string) string {
	if q.perTen[tenant] > 0 || q.opts.Weights[tenant] > 0 || len(q.perTen) < q.opts.MaxTenants {
		return tenant // waiting already, named by the operator, or room
	}
	return OthersTenant
}

// forgetIdle drops tenants idle for Options.TenantIdle, at most once a
// second (it looks at every remembered tenant, and runs as requests
// arrive); q.mu is held.
func (q *Queue) forgetIdle() {
	now := q.opts.Now()
	if q.opts.TenantIdle <= 0 || now.Sub(q.forgotAt) < time.Second {
		return
	}
	q.forgotAt = now
	q.fair.forget(now.Add(-q.opts.TenantIdle), q.tenantWaits)
}
