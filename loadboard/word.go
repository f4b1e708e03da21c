package loadboard

import (
	"time"

	"github.com/diffrouter/diffusion-router/wire"
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
}

// SetWord records a worker's reading of its scheduler: generations
// queued and running, read at at.
func (b *Board) SetWord(addr string, queued, running int64, at time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.words[addr] = word{queued: queued, running: running, at: at}
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
