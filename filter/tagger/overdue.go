package tagger

import (
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"

	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/wire"
)

// Overdue and stalled requests. A GPU that hangs (a stuck kernel, a lost
// collective peer) still answers /health: only the time a request has run
// against what least-work expected of it shows the hang. Each VM watches
// the requests it picked a worker for until their answers start:
//   - past the overdue limit, the worker's record says so (OverdueAt),
//     refreshed every tick while it lasts: no pick here (leastwork.usable),
//     and the next report tells the control plane (no grants, no picks by
//     other Envoys; GET /workers shows it suspect);
//   - past the stall limit, the request is answered 504 here and the
//     control plane told (wire.PathStalled), which quarantines the worker.
// Both hold without the control plane too: the picks here and the 504.

// running is a picked request awaiting its answer.
type running struct {
	c *httpContext
	// expectMs is least-work's expected time for it when it was sent (0:
	// no estimate: only the floors apply).
	expectMs float64
}

// watch starts watching a request just sent to its worker.
func (c *httpContext) watch(expectMs float64) {
	cfg := c.p.cfg
	if c.sent == nil || (cfg.OverdueFactor <= 0 && cfg.StallFactor <= 0) {
		return
	}
	if expectMs <= 0 {
		expectMs = c.p.picker.expectMs(c.sent.addr)
	}
	c.p.running[c.id] = running{c: c, expectMs: expectMs}
}

// expectMs estimates, from this Envoy's record of the worker, when what it
// counts there (the request just counted included) would be done: the
// estimate a queue grant does not carry (0: no speed known yet).
func (p *picker) expectMs(addr string) float64 {
	h := p.readHost(addr)
	mpc := h.MsPerCost
	if mpc <= 0 && p.view != nil {
		var speeds []float64
		for _, w := range p.view.Workers {
			if w.MsPerCost > 0 {
				speeds = append(speeds, w.MsPerCost)
			}
		}
		mpc = leastwork.Median(speeds)
	}
	g := p.readGlobal()
	return max(float64(max(h.Work, 0))+g.Fit.Base*float64(max(h.Requests, 0)), 0) * mpc
}

// limitUs is max(floor, factor x expected) in µs (MaxInt64: the rule is off).
func limitUs(factor float64, floorMs int64, expectMs float64) int64 {
	if factor <= 0 {
		return math.MaxInt64
	}
	return int64(max(float64(floorMs), factor*expectMs) * 1000)
}

// checkRunning looks at this VM's running requests (every tick).
func (p *pluginContext) checkRunning(now int64) {
	for id, r := range p.running {
		s := r.c.sent
		if s == nil || s.released {
			delete(p.running, id)
			continue
		}
		ran := now - s.at
		switch {
		case ran > limitUs(p.cfg.StallFactor, p.cfg.StallFloorMs, r.expectMs):
			delete(p.running, id)
			p.stall(id, r, ran, now)
		case ran > limitUs(p.cfg.OverdueFactor, p.cfg.OverdueFloorMs, r.expectMs):
			p.picker.noteOverdue(s.addr, ran, r.expectMs, now)
		}
	}
}

// noteOverdue marks the worker's record: a request there is overdue now.
func (p *picker) noteOverdue(addr string, ran int64, expectMs float64, now int64) {
	first := false
	err := p.updateHost(addr, func(h *leastwork.Host) bool {
		first = !leastwork.Overdue(h, now)
		h.OverdueAt, h.OverdueRanMs, h.OverdueExpectMs = now, ran/1000, int64(expectMs)
		return true
	})
	if err != nil {
		proxywasm.LogWarnf("diffusion-tagger: note overdue request on %s: %v", addr, err)
		return
	}
	if first {
		p.overdue.Increment(1)
		proxywasm.LogWarnf("diffusion-tagger: worker %s suspect: a request has run %d ms, expected %d ms; no picks or grants until it answers",
			addr, ran/1000, int64(expectMs))
		p.reportNow(now)
	}
}

// stall answers a request past the stall limit 504 and reports its worker
// to the control plane, which quarantines it.
func (p *pluginContext) stall(id uint32, r running, ran, now int64) {
	s := r.c.sent
	msg := fmt.Sprintf("worker %s stalled: the request ran %d s without an answer, %d s expected; the router took the worker out of rotation",
		s.addr, ran/1_000_000, int64(r.expectMs/1000))
	p.picker.release(r.c.task, s, outcomeGatewayFailed, now)
	p.picker.stalled.Increment(1)
	proxywasm.LogErrorf("diffusion-tagger: %s", msg)
	if err := proxywasm.SetEffectiveContext(id); err == nil {
		_ = proxywasm.SendHttpResponse(504, textHeaders, []byte(msg), -1)
	}
	// The record says overdue for a while yet: this Envoy picks the worker
	// for nothing meanwhile, even if the control plane is away and cannot
	// quarantine it (then it is tried again after stalledHold).
	if err := p.picker.updateHost(s.addr, func(h *leastwork.Host) bool {
		h.OverdueAt, h.OverdueRanMs, h.OverdueExpectMs = now+stalledHold.Microseconds(), ran/1000, int64(r.expectMs)
		return true
	}); err != nil {
		proxywasm.LogWarnf("diffusion-tagger: hold stalled worker %s back: %v", s.addr, err)
	}
	p.picker.reportStalled(s.addr, wire.Overdue{RanMs: ran / 1000, ExpectedMs: int64(r.expectMs)})
}

// stalledHold is how long a worker whose request stalled stays out of this
// Envoy's picks by its own record.
const stalledHold = time.Minute

// reportStalled tells the control plane (fire and forget).
func (p *picker) reportStalled(addr string, o wire.Overdue) {
	body, err := json.Marshal(wire.StallReport{Node: p.envoyID(), Worker: addr, Overdue: o})
	if err != nil {
		return
	}
	if _, err := proxywasm.DispatchHttpCall(p.cluster, p.signedHeaders(wire.PathStalled, body), body, nil, 5000,
		func(_, _, _ int) {}); err != nil {
		proxywasm.LogWarnf("diffusion-tagger: report stalled worker %s: %v", addr, err)
	}
}
