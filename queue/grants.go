package queue

import (
	"slices"
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

type grant struct {
	node, ticket, addr string
	cost               int64
	at                 time.Time
	// freed is the worker's count of reported ends (Fleet.Freed) when
	// granted, and before the requests it ran then: once more than
	// before further ends are reported, this one ended too (a worker runs
	// its requests in order), however soon.
	freed  uint64
	before int64
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

// Handed says that the request k was granted has been handed to the
// Envoy node, whose reports count it from now on: a request the control
// plane holds and sends itself (package heldjobs) is granted under a node
// of its own that never reports.
func (q *Queue) Handed(k Key, node string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.opts.Now()
	for i := range q.grants {
		if g := &q.grants[i]; g.node == k.Node && g.ticket == k.Ticket {
			g.node, g.at = node, now
			return
		}
	}
}
