package tagger

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
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
	// roundRobin: the filter cycles strictly over the eligible workers
	// (wire.PickRoundRobin) instead of picking by least work.
	roundRobin bool
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
	}
}

func nowMicro() int64 { return time.Now().UnixMicro() }

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

// choose picks the worker for a request and counts its cost there. It
// weighs at most leastwork.SampleSize candidates, reading their records
// and the shared part, and writes the one it picks. With freeOnly (the
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
	p.sample = leastwork.Sample(p.sample, cands, &p.rnd)
	p.tab.Global = *p.readGlobal()
	p.tab.Hosts = p.tab.Hosts[:0]
	for _, i := range p.sample {
		p.tab.Hosts = append(p.tab.Hosts, p.readHost(v.Workers[i].Addr))
	}
	if !costKnown {
		cost = p.tab.CostOf(string(task), defaultCost(task))
	}
	if p.roundRobin {
		return p.nextInTurn(v, cands, poolOf(task), model, task, cost, costKnown)
	}
	if freeOnly && v.Queued > 0 {
		// Requests wait: this one waits its turn behind them (the
		// records read tell the queue what this Envoy counts now).
		return leastwork.Choice{}, cost, pickFull
	}
	if freeOnly {
		// p.tab.Hosts[k] is the record of p.sample[k].
		kept := p.sample[:0]
		for k, i := range p.sample {
			w := v.Workers[i]
			if w.RemoteRequests+max(w.ForeignRequests, 0)+max(p.tab.Hosts[k].Requests, 0) < int64(max(w.Slots, 1)) {
				kept = append(kept, i)
			}
		}
		if p.sample = kept; len(kept) == 0 {
			return leastwork.Choice{}, cost, pickFull
		}
	}
	p.rot++
	choice, ok := leastwork.Choose(v, p.sample, &p.tab, cost, p.rot, now)
	if !ok {
		if freeOnly {
			return leastwork.Choice{}, cost, pickFull
		}
		return leastwork.Choice{}, 0, pickNone
	}
	limit := int64(math.MaxInt64)
	if freeOnly {
		// Another thread may have taken the slot since the records were
		// read: the count checks again, on the record it changes.
		for _, i := range p.sample {
			if w := v.Workers[i]; w.Addr == choice.First {
				limit = int64(max(w.Slots, 1)) - w.RemoteRequests - max(w.ForeignRequests, 0)
			}
		}
	}
	switch err := p.count(choice.First, cost, limit); {
	case errors.Is(err, errSlotTaken):
		return leastwork.Choice{}, cost, pickFull
	case err != nil:
		proxywasm.LogWarnf("diffusion-tagger: pick %s: %v", choice.First, err)
		return leastwork.Choice{}, 0, pickNone
	}
	return choice, cost, pickMade
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

// holdJob keeps a created video job's cost on its worker after the create
// call's answer, until the job ends (endJob) or its hold passes. If the
// job cannot be recorded, s stays unreleased and the stream's end
// releases it.
func (p *picker) holdJob(s *sent, id string, now int64) {
	if s == nil || s.released {
		return
	}
	var dropped []leastwork.Job
	err := casBytes(keyJobs, func(raw []byte) ([]byte, bool) {
		jobs, _ := leastwork.DecodeJobs(raw) // an unreadable list starts over
		dropped = jobs.Hold(leastwork.Job{ID: id, Addr: s.addr, Cost: s.cost, Until: now + leastwork.JobHold.Microseconds(), Held: now})
		return jobs.AppendEncode(nil), true
	})
	if err != nil {
		proxywasm.LogWarnf("diffusion-tagger: hold video job: %v", err)
		return
	}
	s.released = true
	p.releaseJobs(dropped)
}

// endJob stops counting a job that a poll or a delete showed ended. A job
// this Envoy does not count may be another's: relay says to tell them.
// gpuMS, when the worker said how long the job took on its GPU
// (inference_time_s), teaches the worker's speed here and, through the
// next report, fleet-wide.
func (p *picker) endJob(id string, relay bool, gpuMS float64) {
	var job leastwork.Job
	found := false
	err := casBytes(keyJobs, func(raw []byte) ([]byte, bool) {
		jobs, _ := leastwork.DecodeJobs(raw)
		if job, found = jobs.Finish(id); !found {
			return nil, false
		}
		return jobs.AppendEncode(nil), true
	})
	if err != nil {
		proxywasm.LogWarnf("diffusion-tagger: end video job: %v", err)
		return
	}
	if found {
		p.releaseJobs([]leastwork.Job{job})
		if gpuMS > 0 && !math.IsInf(gpuMS, 0) {
			g := p.readGlobal()
			if err := p.updateHost(job.Addr, func(h *leastwork.Host) bool { return g.Teach(h, job.Cost, gpuMS) }); err == nil {
				now := nowMicro()
				p.done = leastwork.AppendCompletion(p.done, wire.Completion{Addr: job.Addr, Cost: job.Cost,
					Sent: now - int64(gpuMS*1000), Done: now, GPU: true})
			}
		}
		return
	}
	if relay && id != "" && len(id) <= wire.MaxJobID {
		// The Envoy that counts the job learns its worker's speed from
		// the GPU time.
		e := wire.EndedJob{ID: id}
		if gpuMS > 0 && gpuMS <= wire.MaxJobGPUMs {
			e.GPUMs = gpuMS
		}
		_ = casBytes(keyEnded, func(raw []byte) ([]byte, bool) { return leastwork.AppendEnded(raw, e) })
	}
}

// idleClockMargin: a worker's idle word ends only jobs counted this long
// before it, as the control plane's clock and Envoy's may differ a little.
const idleClockMargin = time.Second

// endJobsBefore stops counting, for each worker in before, the jobs
// counted on it before its time there (µs): one reading of the job list
// for the whole view.
func (p *picker) endJobsBefore(before map[string]int64) {
	var ended []leastwork.Job
	err := casBytes(keyJobs, func(raw []byte) ([]byte, bool) {
		if len(raw) == 0 {
			return nil, false
		}
		jobs, _ := leastwork.DecodeJobs(raw)
		if ended = jobs.EndBefore(before); len(ended) == 0 {
			return nil, false
		}
		return jobs.AppendEncode(nil), true
	})
	if err != nil {
		proxywasm.LogWarnf("diffusion-tagger: end idle worker's jobs: %v", err)
		return
	}
	p.releaseJobs(ended)
}

// deleteJob keeps a deleted job counted for the time it is expected to
// take at most: sglang-diffusion forgets a deleted job but keeps running
// it, and only the worker's own word (idle) or that time ends it.
func (p *picker) deleteJob(id string, now int64) {
	g := p.readGlobal()
	err := casBytes(keyJobs, func(raw []byte) ([]byte, bool) {
		jobs, _ := leastwork.DecodeJobs(raw)
		i := slices.IndexFunc(jobs.List, func(x leastwork.Job) bool { return x.ID == id })
		if i < 0 {
			return nil, false
		}
		j := jobs.List[i]
		mpc := p.speedOf(j.Addr)
		// Its whole expected time from when it was counted: the job may
		// have waited behind others before it ran. Never measured (no
		// speed at all): the hold stays.
		expected := time.Duration((float64(j.Cost) + g.Fit.Base) * mpc * float64(time.Millisecond))
		until := j.Until
		if expected > 0 {
			until = max(now+time.Second.Microseconds(), j.Held+expected.Microseconds())
		}
		if _, ok := jobs.Shorten(id, until); !ok {
			return nil, false
		}
		return jobs.AppendEncode(nil), true
	})
	if err != nil {
		proxywasm.LogWarnf("diffusion-tagger: delete video job: %v", err)
	}
}

// releaseJobs takes ended jobs' cost off their workers. A job says
// nothing of its worker's speed: a poll sees it ended only some time
// after it did.
func (p *picker) releaseJobs(jobs []leastwork.Job) {
	if len(jobs) == 0 {
		return
	}
	freed := make([]string, 0, len(jobs))
	for _, j := range jobs {
		if err := p.updateHost(j.Addr, func(h *leastwork.Host) bool { h.End(j.Cost, 0, 0, false); return true }); err != nil {
			proxywasm.LogWarnf("diffusion-tagger: release video job on %s: %v", j.Addr, err)
		}
		freed = append(freed, j.Addr)
	}
	p.reportNow(nowMicro(), freed...)
}

// speedOf is a worker's learned speed (ms per cost): its own here, else
// what the control plane learned, else the fleet's median in the view
// (0: nobody measured yet).
func (p *picker) speedOf(addr string) float64 {
	if h := p.readHost(addr); h.MsPerCost > 0 {
		return h.MsPerCost
	}
	v := p.currentView(nowMicro())
	if v == nil {
		return 0
	}
	var all []float64
	for _, w := range v.Workers {
		if w.Addr == addr && w.MsPerCost > 0 {
			return w.MsPerCost
		}
		if w.MsPerCost > 0 {
			all = append(all, w.MsPerCost)
		}
	}
	return leastwork.Median(all)
}

// flush adds this thread's picks to the shared count and its completions
// to the shared log.
func (p *picker) flush() {
	if n := p.picked; n > 0 {
		if p.updateGlobal(func(g *leastwork.Global) bool { g.Picks += n; return true }) == nil {
			p.picked = 0
		}
	}
	if len(p.done) == 0 {
		return
	}
	_ = casBytes(keyLog, func(log []byte) ([]byte, bool) {
		if len(log)+len(p.done) > leastwork.MaxLogBytes {
			return log, false // full until the next sync: these are dropped
		}
		return append(log[:len(log):len(log)], p.done...), true
	})
	p.done = p.done[:0]
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

// sync runs on every thread's tick: each adds its completions to the log,
// and the thread that takes the lease for this interval reports the table
// and fetches a new view.
func (p *picker) sync() {
	p.flush()
	now := nowMicro()
	raw, cas, err := proxywasm.GetSharedData(keyLease)
	if err != nil {
		return
	}
	if len(raw) == 8 && now-int64(binary.LittleEndian.Uint64(raw)) < (wire.SyncInterval*9/10).Microseconds() {
		return
	}
	if proxywasm.SetSharedData(keyLease, binary.LittleEndian.AppendUint64(nil, uint64(now)), cas) != nil {
		return // another thread took it
	}
	// The completions leave the table with this report (a lost report
	// loses a few speed samples, nothing else).
	rep := wire.LoadReport{Node: p.envoyID()}
	var log []byte
	if err := casBytes(keyLog, func(raw []byte) ([]byte, bool) {
		log = append(log[:0], raw...)
		return nil, len(raw) > 0
	}); err != nil {
		return
	}
	rep.Completions, _ = leastwork.DecodeCompletions(log)
	_ = casBytes(keyEnded, func(raw []byte) ([]byte, bool) {
		rep.Finished, _ = leastwork.DecodeEnded(raw)
		return nil, len(raw) > 0
	})
	p.expireJobs(now)
	v := p.currentView(now)
	if v != nil {
		rep.Generation = v.Generation
	}
	rep.Hosts = p.busyHosts(v, now, p.setGauges)
	body, err := json.Marshal(rep)
	if err != nil {
		return
	}
	headers, _ := p.reportHeaders(body)
	if _, err := proxywasm.DispatchHttpCall(p.cluster, headers, body, nil, uint32(syncTimeout.Milliseconds()), p.onView); err != nil {
		p.syncFailed("dispatch: " + err.Error())
	}
}

// busyHosts is the load part of a report: the workers with work counted
// here (an idle one adds nothing to the other Envoys' views, and a large
// fleet at a modest load has few busy workers, so the report stays
// small), and those failing now by the ejection rule of v (the view the
// caller read; nil: none yet). each, if set, sees every worker's record.
func (p *picker) busyHosts(v *wire.PickView, now int64, each func(leastwork.Host)) []wire.HostReport {
	out := []wire.HostReport{}
	var rule wire.Ejection
	if v != nil {
		rule = v.Ejection
	}
	for _, a := range p.hostList() {
		h := p.readHost(a)
		// A failing worker is listed even when idle: it failed fast.
		failing := leastwork.Failing(&h, rule, now)
		if h.Work > 0 || h.Requests > 0 || failing {
			r := hostReport(h)
			r.Failing = failing
			out = append(out, r)
		}
		if each != nil {
			each(h)
		}
	}
	return out
}

// hostReport is a worker's record as a report (or a queue call) says it.
func hostReport(h leastwork.Host) wire.HostReport {
	return wire.HostReport{Addr: h.Addr, Work: max(h.Work, 0), Requests: max(h.Requests, 0), MsPerCost: h.MsPerCost, Samples: h.Samples}
}

// signedHeaders are the headers of a call to the control plane's path,
// signed with the job-id secret as syncs are.
func (p *picker) signedHeaders(path string, body []byte) [][2]string {
	return signedAt(p.cluster, p.secret, path, body, nowMicro()/1000)
}

// signedAt is signedHeaders at a given signing time.
func signedAt(cluster string, secret []byte, path string, body []byte, at int64) [][2]string {
	return [][2]string{{":method", "POST"}, {":path", path}, {":authority", cluster},
		{"content-type", "application/json"}, {wire.HeaderSyncTime, strconv.FormatInt(at, 10)},
		{wire.HeaderSyncSignature, wire.SyncSignature(secret, at, body)}}
}

// reportHeaders are signedHeaders for a load report, signed at a time no
// other report of this Envoy was (reportTime); ok is false when reports
// come so fast that the time ran reportAhead ahead of the clock.
func (p *picker) reportHeaders(body []byte) ([][2]string, bool) {
	now := nowMicro() / 1000
	at := p.reportTime(now)
	return signedAt(p.cluster, p.secret, wire.PathFilterSync, body, at), at-now <= reportAhead.Milliseconds()
}

// reportTime is the time (Unix ms) a report is signed at: now, but never
// the time another of this Envoy's reports was signed at (the control
// plane takes each node's signing times as increasing, so two reports in
// one millisecond would refuse the second as a replay).
func (p *picker) reportTime(now int64) int64 {
	at := now
	_ = casBytes(keySigned, func(raw []byte) ([]byte, bool) {
		if len(raw) == 8 {
			at = max(at, int64(binary.LittleEndian.Uint64(raw))+1)
		}
		return binary.LittleEndian.AppendUint64(nil, uint64(at)), true
	})
	return at
}

// reportNow tells the control plane at once that a worker has a free slot
// while requests wait in its queue (a regular sync may be 100 ms away):
// the load part of a sync, without taking the completion log, fire and
// forget.
func (p *picker) reportNow(now int64, freed ...string) {
	v := p.currentView(now)
	if v == nil || v.Queued == 0 {
		return
	}
	rep := wire.LoadReport{Node: p.envoyID(), Generation: v.Generation, Hosts: p.busyHosts(v, now, nil), Freed: freed}
	body, err := json.Marshal(rep)
	if err != nil {
		return
	}
	headers, ok := p.reportHeaders(body)
	if !ok {
		return // the regular sync will say it
	}
	if _, err := proxywasm.DispatchHttpCall(p.cluster, headers, body, nil,
		uint32(syncTimeout.Milliseconds()), func(int, int, int) {}); err != nil {
		proxywasm.LogWarnf("diffusion-tagger: report a free slot: %v", err)
	}
}

// envoyID names this Envoy to the control plane, the same from every
// thread: its node id (when the VM can read it) and a random suffix the
// first syncing thread draws, so two Envoys never share a name (their
// reports would overwrite each other and each would take the other's work
// for its own). newPicker made the key, so the compare-and-swap is real.
func (p *picker) envoyID() string {
	var id string
	err := casBytes(keyNode, func(raw []byte) ([]byte, bool) {
		if len(raw) > 0 {
			id = string(raw)
			return nil, false
		}
		id = p.node + "-" + newRequestID()[:12]
		return []byte(id), true
	})
	if err != nil {
		return p.node + "-unnamed"
	}
	return id
}

// expireJobs stops counting the jobs whose hold passed.
func (p *picker) expireJobs(now int64) {
	var ended []leastwork.Job
	_ = casBytes(keyJobs, func(raw []byte) ([]byte, bool) {
		jobs, _ := leastwork.DecodeJobs(raw)
		if ended = jobs.Expire(now); len(ended) == 0 {
			return nil, false
		}
		return jobs.AppendEncode(nil), true
	})
	p.releaseJobs(ended)
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

// setGauges exports one worker's outstanding work, requests, learned
// speed (µs per unit of cost) and the samples it was learned from as Envoy
// stats. A gauge is written only when its value changed.
func (p *picker) setGauges(h leastwork.Host) {
	g, ok := p.gauges[h.Addr]
	if !ok {
		name := statName(h.Addr)
		g = [4]proxywasm.MetricGauge{
			proxywasm.DefineGaugeMetric("diffusion_router.pick.outstanding_work." + name),
			proxywasm.DefineGaugeMetric("diffusion_router.pick.outstanding_requests." + name),
			proxywasm.DefineGaugeMetric("diffusion_router.pick.us_per_cost." + name),
			proxywasm.DefineGaugeMetric("diffusion_router.pick.speed_samples." + name),
		}
		p.gauges[h.Addr] = g
	}
	// Gauges only add; every thread's gauge of one name is one stat.
	for i, v := range []int64{h.Work, h.Requests, int64(h.MsPerCost * 1000), h.Samples} {
		if d := v - g[i].Value(); d != 0 {
			g[i].Add(d)
		}
	}
}

// setForeign shows the requests a worker says it holds that no Envoy
// counts (diffusion_router.pick.foreign_requests.<worker>).
func (p *picker) setForeign(addr string, n int64) {
	g, ok := p.foreign[addr]
	if !ok {
		g = proxywasm.DefineGaugeMetric("diffusion_router.pick.foreign_requests." + statName(addr))
		p.foreign[addr] = g
	}
	if d := n - g.Value(); d != 0 {
		g.Add(d)
	}
}

// statName is a worker address as a stat name part.
func statName(addr string) string {
	return strings.NewReplacer(".", "_", ":", "_", "[", "", "]", "").Replace(addr)
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

// keyTurnPrefix names the shared round-robin positions, one per pool and
// (listed) model.
const keyTurnPrefix = "diffusion-router.pick.turn."

// nextInTurn is strict round-robin: the next eligible worker in the view's
// order after the one the last request of this kind went to, whichever
// thread sent it (the position is shared data), and the one after it for
// a retry.
func (p *picker) nextInTurn(v *wire.PickView, cands []int, pool leastwork.Pool, model string, task Task, cost int64, costKnown bool) (leastwork.Choice, int64, pickStatus) {
	key := keyTurnPrefix + strconv.Itoa(int(pool))
	if model != "" && slices.Contains(v.Workers[cands[0]].Models, model) {
		key += "/" + model // the model narrowed the list: a cycle of its own
	}
	if _, _, err := proxywasm.GetSharedData(key); errors.Is(err, types.ErrorStatusNotFound) {
		_ = proxywasm.SetSharedData(key, nil, 0)
	}
	var turn uint64
	if err := casBytes(key, func(raw []byte) ([]byte, bool) {
		turn = 0
		if len(raw) == 8 {
			turn = binary.LittleEndian.Uint64(raw)
		}
		return binary.LittleEndian.AppendUint64(nil, turn+1), true
	}); err != nil {
		proxywasm.LogWarnf("diffusion-tagger: round-robin: %v", err)
		return leastwork.Choice{}, 0, pickNone
	}
	n := uint64(len(cands))
	c := leastwork.Choice{First: v.Workers[cands[turn%n]].Addr}
	if n > 1 {
		c.Second = v.Workers[cands[(turn+1)%n]].Addr
	}
	if !costKnown {
		cost = p.readGlobal().CostOf(string(task), defaultCost(task))
	}
	if err := p.count(c.First, cost, math.MaxInt64); err != nil {
		proxywasm.LogWarnf("diffusion-tagger: pick %s: %v", c.First, err)
		return leastwork.Choice{}, 0, pickNone
	}
	return c, cost, pickMade
}
