package tagger

import (
	"errors"
	"time"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/wire"
)

// Least-work routing inside Envoy. Every worker thread runs its own copy of
// the plugin; what they share lives in proxy-wasm shared data, one Envoy
// wide:
//   - the table: outstanding work and learned speed per worker, one
//     record each, and the part they share (records.go), changed by
//     compare-and-swap on every send and every end;
//   - the view (wire.PickView) from the control plane, prefixed with when
//     it arrived;
//   - the completion log (leastwork.AppendCompletion) the next sync reports,
//     to which each thread adds its own at its tick;
//   - the sync lease: when a thread last synced, so one thread per
//     interval does;
//   - the video jobs whose cost still counts (leastwork.Jobs), and the ids of
//     jobs seen ending here that the next sync tells the other Envoys.
const (
	keyView  = "diffusion-router.pick.view"
	keyLease = "diffusion-router.pick.lease"
	keyLog   = "diffusion-router.pick.completions"
	keyNode  = "diffusion-router.pick.node"
	keyJobs  = "diffusion-router.pick.jobs"
	keyEnded = "diffusion-router.pick.jobs-ended"
	// keyStamp holds when the current view arrived (8 bytes): the request
	// path reads it, and the view itself only when it changed.
	keyStamp = "diffusion-router.pick.view-stamp"
	// keySigned holds the last time (Unix ms) a call to the control plane
	// was signed at, so each gets its own.
	keySigned = "diffusion-router.pick.signed"

	// casTries bounds the compare-and-swap loop; with a handful of worker
	// threads contending, a few tries always do.
	casTries = 16
	// syncTimeout bounds one sync call.
	syncTimeout = 500 * time.Millisecond
	// reportAhead bounds how far reports' signing times may run ahead of
	// the clock (one a millisecond at most, on average).
	reportAhead = 200 * time.Millisecond
)

// picker is one thread's part of least-work routing.
type picker struct {
	cluster string
	node    string
	// secret signs the syncs (the job-id secret: the control plane holds
	// it too).
	secret []byte
	// view is this thread's parse of the shared view, valid while the
	// shared copy's CAS is viewCAS.
	view      *wire.PickView
	viewStamp []byte
	viewAt    int64 // µs: when the view arrived from the control plane
	// done holds this thread's completions until its next tick adds them
	// to the shared log (one compare-and-swap per tick, not per request).
	done     []byte
	rot      int
	failures int
	gauges   map[string][4]proxywasm.MetricGauge
	foreign  map[string]proxywasm.MetricGauge
	picks    proxywasm.MetricCounter
	unpicked proxywasm.MetricCounter
	syncErrs proxywasm.MetricCounter
	// Counters of the router-owned queue.
	queued, granted, queueRefused, queueFallbacks proxywasm.MetricCounter
	// held counts video creates handed to the control plane's held jobs.
	held proxywasm.MetricCounter
	// overdue counts workers found with a request far overdue (once per
	// spell), stalled the requests answered 504 at the stall limit.
	overdue, stalled proxywasm.MetricCounter
	// policy chooses each request's worker (chosen once, at start).
	policy routingPolicy
	// picked counts this thread's picks since its last tick, which adds
	// them to the shared count (estimates age by it).
	picked int64
	// Scratch for the request path: the shared part and the weighed
	// workers' records as one table, a record's encoding, the sample.
	global leastwork.Global
	tab    leastwork.Table
	buf    []byte
	sample []int
	rnd    uint64
	// eligible caches the candidate lists of the current view, by pool
	// and model: computed once per view, not per request.
	eligible map[eligibleKey][]int
	// keys caches record keys; listed is the worker list as last read
	// (listedCAS: its version).
	keys      map[string]string
	listed    map[string]bool
	listedCAS uint32
}

// eligibleKey names a candidate list.
type eligibleKey struct {
	pool  leastwork.Pool
	model string
}

// maxEligibleLists bounds the cache: clients may name any model.
const maxEligibleLists = 64

func newPicker(cluster string, secret []byte) *picker {
	node := "envoy"
	for _, path := range [][]string{{"xds", "node", "id"}, {"node", "id"}} {
		if b, err := proxywasm.GetProperty(path); err == nil && validHeaderValue(string(b)) && len(b) > 0 && len(b) < 200 {
			node = string(b)
			break
		}
	}
	// A new thread must not reset a table other threads already fill: the
	// empty table is written only where there is none.
	for _, key := range []string{keyGlobal, keyHosts, keySigned, keyLease, keyLog, keyNode, keyStamp, keyView, keyJobs, keyEnded} {
		if _, _, err := proxywasm.GetSharedData(key); errors.Is(err, types.ErrorStatusNotFound) {
			_ = proxywasm.SetSharedData(key, nil, 0)
		}
	}
	return &picker{
		cluster: cluster, node: node, secret: secret, gauges: map[string][4]proxywasm.MetricGauge{}, foreign: map[string]proxywasm.MetricGauge{},
		eligible: map[eligibleKey][]int{}, keys: map[string]string{}, rnd: uint64(time.Now().UnixNano()) | 1,
		picks:          proxywasm.DefineCounterMetric("diffusion_router.pick.picked"),
		unpicked:       proxywasm.DefineCounterMetric("diffusion_router.pick.unpicked"),
		syncErrs:       proxywasm.DefineCounterMetric("diffusion_router.pick.sync_errors"),
		queued:         proxywasm.DefineCounterMetric("diffusion_router.queue.queued"),
		granted:        proxywasm.DefineCounterMetric("diffusion_router.queue.granted"),
		queueRefused:   proxywasm.DefineCounterMetric("diffusion_router.queue.refused"),
		queueFallbacks: proxywasm.DefineCounterMetric("diffusion_router.queue.fallbacks"),
		held:           proxywasm.DefineCounterMetric("diffusion_router.queue.held_jobs"),
		overdue:        proxywasm.DefineCounterMetric("diffusion_router.pick.overdue_workers"),
		stalled:        proxywasm.DefineCounterMetric("diffusion_router.pick.stalled_requests"),
	}
}

func nowMicro() int64 { return time.Now().UnixMicro() }

// poolOf is the kind of worker a task needs (as the front routes decide).
func poolOf(t Task) leastwork.Pool {
	switch t {
	case TaskVideo:
		return leastwork.PoolVideo
	case TaskImage, TaskImageEdit:
		return leastwork.PoolImage
	}
	return leastwork.PoolAny
}

// picks reports whether a request of this task is one the filter picks a
// worker for: new generations. Polls and job calls are pinned to their
// worker; everything else goes by Envoy's policy.
func picks(method string, t Task) bool {
	return method == "POST" && (t == TaskImage || t == TaskImageEdit || t == TaskVideo || t == TaskNative)
}

// sent is a request the filter counted on a worker; its cost leaves the
// worker exactly once, when the answer starts or the stream ends.
type sent struct {
	addr      string
	cost      int64
	costKnown bool
	at        int64
	released  bool
}

// pickStatus is how a pick went.
type pickStatus int

const (
	// pickNone: no fresh view or no eligible worker; Envoy's policy routes.
	pickNone pickStatus = iota
	pickMade
	// pickFull: with the router-owned queue, no weighed worker has a free
	// slot (or requests already wait): the request asks for its turn.
	pickFull
)

// choose picks the worker for a request and counts its cost there: the
// steps every policy shares (a fresh view, the eligible workers, the
// cost), then the plugin's routing policy. With freeOnly (the
// router-owned queue), only workers with a free slot count, and none
// while requests wait in the queue.
func (p *picker) choose(task Task, model string, cost int64, costKnown, freeOnly bool) (leastwork.Choice, int64, pickStatus) {
	now := nowMicro()
	p.tab.Hosts = p.tab.Hosts[:0]
	v := p.currentView(now)
	if v == nil {
		return leastwork.Choice{}, 0, pickNone
	}
	cands := p.candidates(v, poolOf(task), model)
	if len(cands) == 0 {
		if freeOnly && v.Paused {
			// The workers for it are loading weights: its turn comes
			// when they are back.
			return leastwork.Choice{}, cost, pickFull
		}
		return leastwork.Choice{}, 0, pickNone
	}
	p.tab.Global = *p.readGlobal()
	if !costKnown {
		cost = p.tab.CostOf(string(task), defaultCost(task))
	}
	r := pickRequest{view: v, cands: cands, pool: poolOf(task), model: model, cost: cost, freeOnly: freeOnly, now: now}
	choice, st := p.policy.choose(p, &r)
	if st == pickNone {
		cost = 0
	}
	return choice, cost, st
}

// errSlotTaken: the worker's free slot was taken meanwhile.
var errSlotTaken = errors.New("slot taken")

// count counts a request of cost on the worker it goes to, unless this
// Envoy already counts limit requests there (errSlotTaken).
func (p *picker) count(addr string, cost, limit int64) error {
	taken := false
	err := p.updateHost(addr, func(h *leastwork.Host) bool {
		if taken = max(h.Requests, 0) >= limit; taken {
			return false
		}
		h.Add(cost)
		return true
	})
	switch {
	case err != nil:
		return err
	case taken:
		return errSlotTaken
	}
	p.picked++
	return nil
}

// defaultCost is a request's cost before any of its task was seen: the
// cost of sglang-diffusion's default image (50 steps at 1024x1024), and
// for a video its default 81 frames.
func defaultCost(t Task) int64 {
	d := wire.DefaultFilterConfig().Defaults
	c := int64(d.Steps) * int64(d.Width) * int64(d.Height) >> 20
	if t == TaskVideo {
		c *= int64(d.VideoFrames)
	}
	return c
}

// outcome is how a picked request ended, for the worker's record.
type outcome int

const (
	// outcomeOther: no word on the worker (the client left, a retry
	// answered by another worker).
	outcomeOther outcome = iota
	// outcomeServed: the picked worker answered with success.
	outcomeServed
	// outcomeAnswered: the picked worker answered below 500, not with
	// success (a 4xx): it works, but the answer says nothing of its speed.
	outcomeAnswered
	// outcomeFailed: the picked worker answered 5xx; outcomeGatewayFailed:
	// 502-504, its own or Envoy's for a reset or timeout.
	outcomeFailed
	outcomeGatewayFailed
)

// release takes a request's cost off its worker and records how the
// worker did (a success's service time teaches its speed); at is when.
func (p *picker) release(task Task, s *sent, how outcome, at int64) {
	served := how == outcomeServed
	if s == nil || s.released {
		return
	}
	var ms, mpc float64
	var g *leastwork.Global
	if served {
		g = p.readGlobal() // a success teaches the speed, with the shared base
	}
	err := p.updateHost(s.addr, func(h *leastwork.Host) bool {
		if ms = h.End(s.cost, s.at, at, served); ms > 0 {
			g.Learn(h, s.cost, ms)
		}
		switch how {
		case outcomeAnswered:
			h.Answered()
		case outcomeFailed, outcomeGatewayFailed:
			h.Fail(at, how == outcomeGatewayFailed)
		}
		mpc = h.MsPerCost
		return true
	})
	if err != nil {
		// Not released: the stream's end tries again, so the work does
		// not stay on the worker.
		proxywasm.LogWarnf("diffusion-tagger: release: %v", err)
		return
	}
	// What the answer teaches the whole table: the base fit, and the cost
	// of requests of its kind.
	_ = p.updateGlobal(func(g *leastwork.Global) bool {
		if ms > 0 {
			g.Fit.Add(float64(s.cost), ms)
		}
		switch {
		case !served:
			// A refused request (a 422 for an absurd size) says
			// nothing of the work requests of its kind carry.
		case s.costKnown:
			g.LearnCost(string(task), float64(s.cost))
		case ms > 0 && mpc > 0:
			// A request the filter could not read (a multipart edit,
			// a large body) is known by its service time afterwards.
			g.LearnCost(string(task), max(ms/mpc-g.Fit.Base, 1))
		default:
			return ms > 0
		}
		return true
	})
	s.released = true
	p.reportNow(at, s.addr)
	if served {
		p.done = leastwork.AppendCompletion(p.done, wire.Completion{Addr: s.addr, Cost: s.cost, Sent: s.at, Done: at})
	}
}

// move counts a request on addr, the worker that took it, when that is
// not the one picked (a retry went elsewhere); s follows it there.
func (p *picker) move(s *sent, addr string) {
	if s == nil || s.released || addr == s.addr {
		return
	}
	if err := p.updateHost(addr, func(h *leastwork.Host) bool { h.Add(s.cost); return true }); err != nil {
		// s stays on the picked worker, where its release finds it.
		proxywasm.LogWarnf("diffusion-tagger: move to %s: %v", addr, err)
		return
	}
	if err := p.updateHost(s.addr, func(h *leastwork.Host) bool { h.Take(s.cost); return true }); err != nil {
		proxywasm.LogWarnf("diffusion-tagger: move from %s: %v", s.addr, err)
	}
	s.addr = addr
}

// accepted notes that the worker took a job (a run of failures ends)
// without releasing the request's cost, and learns the cost of its kind.
func (p *picker) accepted(task Task, s *sent) {
	if err := p.updateHost(s.addr, func(h *leastwork.Host) bool { return h.Answered() }); err != nil {
		proxywasm.LogWarnf("diffusion-tagger: note answer: %v", err)
	}
	if s.costKnown {
		_ = p.updateGlobal(func(g *leastwork.Global) bool { g.LearnCost(string(task), float64(s.cost)); return true })
	}
}

// casBytes replaces a shared-data value by f's result, by compare-and-swap.
func casBytes(key string, f func([]byte) ([]byte, bool)) error {
	for range casTries {
		raw, cas, err := proxywasm.GetSharedData(key)
		if err != nil {
			return err
		}
		out, changed := f(raw)
		if !changed {
			return nil
		}
		if err := proxywasm.SetSharedData(key, out, cas); !errors.Is(err, types.ErrorStatusCasMismatch) {
			return err
		}
	}
	return errors.New("shared data " + key + ": too much contention")
}

// setPickHeaders names the pick for override_host.
func setPickHeaders(c leastwork.Choice) error {
	if err := proxywasm.ReplaceHttpRequestHeader(wire.HeaderPick, c.First); err != nil {
		return err
	}
	if c.Second != "" {
		return proxywasm.ReplaceHttpRequestHeader(wire.HeaderPickRetry, c.Second)
	}
	return nil
}
