package tagger

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"

	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/wire"
)

// currentView returns the fleet view if one arrived within wire.ViewTTL,
// else nil: a filter cut off from the control plane stops picking and
// Envoy's own policy routes, so it never picks a worker that left.
func (p *picker) currentView(now int64) *wire.PickView {
	stamp, _, err := proxywasm.GetSharedData(keyStamp)
	if err != nil || len(stamp) != 8 {
		return nil
	}
	if p.view == nil || !bytes.Equal(stamp, p.viewStamp) {
		raw, _, err := proxywasm.GetSharedData(keyView)
		if err != nil || len(raw) < 8 {
			return nil
		}
		var v wire.PickView
		if err := json.Unmarshal(raw[8:], &v); err != nil {
			return nil
		}
		p.view, p.viewAt = &v, int64(binary.LittleEndian.Uint64(raw))
		p.viewStamp = append(p.viewStamp[:0], stamp...)
		clear(p.eligible)
	}
	if now-p.viewAt > wire.ViewTTL.Microseconds() {
		return nil
	}
	return p.view
}

// candidates is the view's candidate list for a pool and model, from the
// cache when this view already answered it.
func (p *picker) candidates(v *wire.PickView, pool leastwork.Pool, model string) []int {
	k := eligibleKey{pool, model}
	if c, ok := p.eligible[k]; ok {
		return c
	}
	c := leastwork.Eligible(nil, v, pool, model)
	if len(p.eligible) < maxEligibleLists {
		p.eligible[k] = c
	}
	return c
}

// onView stores the control plane's answer for every thread.
func (p *picker) onView(_, bodySize, _ int) {
	hs, _ := proxywasm.GetHttpCallResponseHeaders()
	status := httpStatus(hs)
	body, err := proxywasm.GetHttpCallResponseBody(0, bodySize)
	if status != "200" || err != nil {
		p.syncFailed("status " + status + ": " + strings.TrimSpace(string(body)))
		return
	}
	var v wire.PickView
	if err := json.Unmarshal(body, &v); err != nil {
		p.syncFailed("view: " + err.Error())
		return
	}
	p.failures = 0
	// Every listed worker has a record before any thread can pick it.
	addrs := make([]string, len(v.Workers))
	for i, w := range v.Workers {
		addrs[i] = w.Addr
	}
	if err := p.recordHosts(addrs); err != nil {
		p.syncFailed("records: " + err.Error())
		return
	}
	stored := binary.LittleEndian.AppendUint64(make([]byte, 0, 8+len(body)), uint64(nowMicro()))
	stored = append(stored, body...)
	if casBytes(keyView, func([]byte) ([]byte, bool) { return stored, true }) != nil {
		return
	}
	// The stamp goes second: a thread that sees it finds the view.
	_ = casBytes(keyStamp, func([]byte) ([]byte, bool) { return stored[:8], true })
	// Jobs other Envoys (or the workers' own lists) saw end: one of them
	// may be counted here.
	for _, e := range v.Finished {
		p.endJob(e.ID, false, e.GPUMs)
	}
	// A worker that said it held nothing has ended every job counted on
	// it from before then (a margin for the two clocks).
	idle := map[string]int64{}
	for _, w := range v.Workers {
		if w.IdleAt > 0 {
			idle[w.Addr] = w.IdleAt - idleClockMargin.Microseconds()
		}
	}
	if len(idle) > 0 {
		p.endJobsBefore(idle)
	}
	listed := make(map[string]bool, len(v.Workers))
	for _, w := range v.Workers {
		listed[w.Addr] = true
		p.setForeign(w.Addr, w.ForeignRequests)
	}
	for a := range p.foreign {
		if !listed[a] {
			p.setForeign(a, 0)
		}
	}
	p.forgetHosts(listed)
}

// syncFailed counts a failed sync and logs the first of a run of them.
func (p *picker) syncFailed(why string) {
	p.syncErrs.Increment(1)
	if p.failures++; p.failures == 1 {
		proxywasm.LogWarnf("diffusion-tagger: sync with the control plane failed (%s); picking stops once the last view is %v old", why, wire.ViewTTL)
	}
}
