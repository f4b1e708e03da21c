package queue

import (
	"slices"
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

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

// nextDue is when a full worker is next due a request ahead (zero: none).
func (q *Queue) nextDue() time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.wake
}

// planWake notes when a full worker next comes due a request ahead, for
// Run to dispatch then; q.mu is held.
func (q *Queue) planWake(d *dispatch) {
	if q.waiting == 0 || q.opts.Ahead <= 0 {
		return
	}
	for i, w := range d.v.Workers {
		if d.busy(i) != d.slots(i) {
			continue
		}
		if due := q.dues[w.Addr]; int64(len(due)) >= d.slots(i) {
			at := earliest(due).at.Add(-q.opts.Ahead)
			if at.After(d.now) && (q.wake.IsZero() || at.Before(q.wake)) {
				q.wake = at
			}
		}
	}
}
