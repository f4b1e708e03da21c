package loadboard

import (
	"time"

	"github.com/diffrouter/diffusion-router/wire"
	"github.com/diffrouter/diffusion-router/workerword"
)

// The workers' own word (package workerword): what a worker says it holds
// corrects what the Envoys count. A reading older than wordFresh is not
// used (the worker stopped answering, or stopped serving metrics).
const wordFresh = 1500 * time.Millisecond

// maxForeign bounds the foreign requests passed on for one worker: past
// it the worker is out of the running anyway.
const maxForeign = 1 << 12

type word struct {
	queued, running int64
	at              time.Time
	// excess and prevExcess are the requests this reading and the one
	// before held beyond what the Envoys counted lately: work counts as
	// foreign only when two readings in a row see it (a request far
	// shorter than the Envoys' report interval can be in a reading and
	// in no report).
	excess, prevExcess int64
}

// SetWord records a worker's word: of its scheduler (generations queued
// and running), what it holds that no Envoy counts.
func (b *Board) SetWord(addr string, wd workerword.Word) {
	if wd.Scheduler == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	queued, running, at := wd.Scheduler.Queued, wd.Scheduler.Running, wd.At
	w := word{queued: queued, running: running, at: at, excess: max(0, queued+running-b.recentlyCounted(addr, at))}
	if old, ok := b.words[addr]; ok && at.Sub(old.at) <= wordFresh {
		w.prevExcess = old.excess
	}
	b.words[addr] = w
	// Readings of workers that left stop being refreshed; drop them
	// once they could no longer count.
	for a, w := range b.words {
		if at.Sub(w.at) > 10*wordFresh {
			delete(b.words, a)
		}
	}
}

// JobsEnded passes on video jobs a worker's own list shows ended, to every
// Envoy (the one that counts a job stops counting it and learns the
// worker's speed from its GPU time).
func (b *Board) JobsEnded(jobs []wire.EndedJob) {
	if len(jobs) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	for _, j := range jobs {
		// No node: relayed to every Envoy.
		b.ended = append(b.ended, endedJob{job: j, at: now})
	}
}

// Counted reports whether any live Envoy counts requests on addr (a job
// list is worth reading only then).
func (b *Board) Counted(addr string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.expire(b.now())
	for _, e := range b.reports {
		for _, h := range e.report.Hosts {
			if h.Addr == addr && h.Requests > 0 {
				return true
			}
		}
	}
	return false
}

// A worker's reading is up to an interval old, and the Envoys' counts up to
// a sync old: a request that just ended can still be in the reading while
// no Envoy counts it any more, and would pass for another client's. So a
// reading is compared with the most requests the Envoys counted on the
// worker in the last one to two seconds (whole-second buckets): only work
// no Envoy counted at any time lately is foreign. Under steady load this
// undercounts foreign work, never invents it.
type peak struct {
	cur, prev int64
	sec       int64 // the bucket cur is for (Unix seconds)
}

// notePeaks records the requests the Envoys count now; b.mu is held.
func (b *Board) notePeaks(counted map[string][2]int64, now time.Time) {
	sec := now.Unix()
	for a, c := range counted {
		n := c[1]
		p := b.peaks[a]
		if p.sec != sec {
			p.prev = 0
			if p.sec == sec-1 {
				p.prev = p.cur
			}
			p.cur, p.sec = 0, sec
		}
		p.cur = max(p.cur, n)
		b.peaks[a] = p
	}
	for a, p := range b.peaks {
		if sec-p.sec > 1 {
			delete(b.peaks, a)
		}
	}
}

// recentlyCounted is the most requests the Envoys counted on addr in the
// current and the previous second; b.mu is held.
func (b *Board) recentlyCounted(addr string, now time.Time) int64 {
	p, ok := b.peaks[addr]
	switch sec := now.Unix(); {
	case !ok || sec-p.sec > 1:
		return 0
	case sec-p.sec == 1:
		return p.cur
	}
	return max(p.cur, p.prev)
}
