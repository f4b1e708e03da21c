package tagger

import (
	"errors"
	"math"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"

	"github.com/diffrouter/diffusion-router/leastwork"
)

// leastWork sends a request to the worker expected to finish it first
// (package leastwork). It weighs at most leastwork.SampleSize of the
// candidates, reading their records and the shared part, and writes the
// one it picks. Under the queue it takes only a free slot, and none
// while requests wait.
type leastWork struct{}

func (leastWork) choose(p *picker, r *pickRequest) (leastwork.Choice, pickStatus) {
	v := r.view
	p.sample = leastwork.Sample(p.sample, r.cands, &p.rnd)
	for _, i := range p.sample {
		p.tab.Hosts = append(p.tab.Hosts, p.readHost(v.Workers[i].Addr))
	}
	if r.freeOnly && v.Queued > 0 {
		// Requests wait: this one waits its turn behind them (the
		// records read tell the queue what this Envoy counts now).
		return leastwork.Choice{}, pickFull
	}
	if r.freeOnly {
		// p.tab.Hosts[k] is the record of p.sample[k].
		kept := p.sample[:0]
		for k, i := range p.sample {
			w := v.Workers[i]
			if w.RemoteRequests+max(w.ForeignRequests, 0)+max(p.tab.Hosts[k].Requests, 0) < int64(max(w.Slots, 1)) {
				kept = append(kept, i)
			}
		}
		if p.sample = kept; len(kept) == 0 {
			return leastwork.Choice{}, pickFull
		}
	}
	p.rot++
	choice, ok := leastwork.Choose(v, p.sample, &p.tab, r.cost, p.rot, r.now)
	if !ok {
		if r.freeOnly {
			return leastwork.Choice{}, pickFull
		}
		return leastwork.Choice{}, pickNone
	}
	limit := int64(math.MaxInt64)
	if r.freeOnly {
		// Another thread may have taken the slot since the records were
		// read: the count checks again, on the record it changes.
		for _, i := range p.sample {
			if w := v.Workers[i]; w.Addr == choice.First {
				limit = int64(max(w.Slots, 1)) - w.RemoteRequests - max(w.ForeignRequests, 0)
			}
		}
	}
	switch err := p.count(choice.First, r.cost, limit); {
	case errors.Is(err, errSlotTaken):
		return leastwork.Choice{}, pickFull
	case err != nil:
		proxywasm.LogWarnf("diffusion-tagger: pick %s: %v", choice.First, err)
		return leastwork.Choice{}, pickNone
	}
	return choice, pickMade
}
