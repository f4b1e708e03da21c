package loadboard

import (
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

// Suspect workers: a filter reports a worker with a request running far
// past its expected time (wire.HostReport.Overdue). The worker may hang
// (its /health answers all the same), so while any live report says so it
// is left out of every view, the filters' and the queue's: no picks, no
// grants. It is back as soon as the reports stop saying so (the request
// was answered); past the stall limit the filter answers the request and
// the control plane quarantines the worker instead (wire.PathStalled).

// Suspect is a worker a filter reports overdue.
type Suspect struct {
	wire.Overdue
	// Since is when the board first heard of it.
	Since time.Time `json:"since"`
}

// overdueHosts is every worker a live report says is overdue, with its
// longest-running request; b.mu is held.
func (b *Board) overdueHosts() map[string]wire.Overdue {
	var out map[string]wire.Overdue
	for _, e := range b.reports {
		for _, h := range e.report.Hosts {
			if h.Overdue == nil {
				continue
			}
			if out == nil {
				out = map[string]wire.Overdue{}
			}
			if o, ok := out[h.Addr]; !ok || h.Overdue.RanMs > o.RanMs {
				out[h.Addr] = *h.Overdue
			}
		}
	}
	return out
}

// noteSuspects updates the suspects from the live reports and tells
// Options.Suspected of each change; b.mu is held.
func (b *Board) noteSuspects(now time.Time) map[string]wire.Overdue {
	over := b.overdueHosts()
	for addr, o := range over {
		if s, ok := b.suspects[addr]; ok {
			s.Overdue = o
			b.suspects[addr] = s
			continue
		}
		b.suspects[addr] = Suspect{Overdue: o, Since: now}
		if b.suspected != nil {
			b.suspected(addr, o, true)
		}
	}
	for addr, s := range b.suspects {
		if _, still := over[addr]; !still {
			delete(b.suspects, addr)
			if b.suspected != nil {
				b.suspected(addr, s.Overdue, false)
			}
		}
	}
	return over
}

// Suspects are the workers the live reports say are overdue now, by
// address (Addr).
func (b *Board) Suspects() map[string]Suspect {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	b.expire(now)
	b.noteSuspects(now)
	out := make(map[string]Suspect, len(b.suspects))
	for a, s := range b.suspects {
		out[a] = s
	}
	return out
}
