// Package leastwork is least-work routing's arithmetic, pure so it is tested
// natively: the table of outstanding work and learned speed each Envoy
// keeps (in proxy-wasm shared data, so every worker thread sees one table),
// which workers a request may go to, and which of them finishes it first.
package leastwork

import (
	"math"
	"slices"
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

// Host is one worker as one Envoy sees it.
type Host struct {
	Addr string
	// Work is the estimated cost of the requests sent and not finished;
	// Requests counts them.
	Work, Requests int64
	// MsPerCost is the learned milliseconds per unit of effective cost
	// (0: none). A request's effective cost is its estimate plus the
	// table's Fit.Base.
	MsPerCost float64
	Samples   int64
	// Streak counts the latest samples in a row above (positive) or
	// below (negative) the estimate by more than speedShift.
	Streak int64
	// SampledAt is the table's Picks when the worker last taught its
	// speed: an estimate many picks old is stale.
	SampledAt int64
	// Failures counts the worker's 5xx answers in a row (Envoy answers
	// 502-504 for a reset or timeout), and GatewayFailures the 502-504
	// ones among the latest, as Envoy's outlier detection counts them;
	// the last at FailedAt (µs).
	Failures, GatewayFailures, FailedAt int64
	// LastDone is when the worker last finished a request (µs): it serves
	// one at a time, so a request's service began at its send time or
	// here, whichever is later.
	LastDone int64
	// OverdueAt is when a request on the worker was last seen running far
	// past its expected time (µs; see Overdue), OverdueRanMs how long it
	// had run then and OverdueExpectMs what was expected of it.
	OverdueAt, OverdueRanMs, OverdueExpectMs int64
}

// TaskCost is a learned average request cost of one task class.
type TaskCost struct {
	Task    string
	Avg     float64
	Samples int64
}

// Global is what a table's hosts share: the average cost per task class,
// the fixed part of a request's cost, and a count of picks (the clock
// estimates age by).
type Global struct {
	Tasks []TaskCost
	// Picks counts the requests sent.
	Picks int64
	Fit   Fit
}

// Table is one Envoy's state (or the control plane's, fleet-wide): every
// worker it has sent work to, and what they share. The filter keeps each
// host and the global part in records of their own (see AppendHost), so a
// request reads and writes only the workers it weighs.
type Table struct {
	Hosts []Host
	Global
}

// The completion log: answers since the last sync, for the fleet-wide
// speed estimate. It is kept apart from the table (which every request
// reads and writes whole) and only ever appended to until a sync takes it.
const (
	// MaxCompletions bounds the completions one report carries.
	MaxCompletions = 512
	// MaxLogBytes bounds the log between syncs; completions beyond it are
	// dropped (a few speed samples fewer, nothing else).
	MaxLogBytes = 32 << 10
)

// Fit is a decayed least-squares fit of service time t against cost c,
// t = a + b c, pooled over the workers. Base = a / b is the fixed part of
// a request in cost units: a diffusion request also pays for text
// encoding, VAE decoding and scheduling, which the megapixel-steps
// estimate leaves out. It is the same on a faster or slower GPU (both
// parts scale), so one fit serves the fleet, and each worker's MsPerCost
// carries its speed.
type Fit struct {
	Base            float64
	N, C, T, CC, CT float64
}

// Learning rates: in steady state the speed estimate moves 10 % of the way
// (in log space) toward each sample, which keeps timing noise out of it;
// from the second sample in a row off by more than speedShift it moves
// half the way, so a worker that turns 2x slower is seen 1.7x slower
// after 3 requests. A sample is first clipped to within 4x of the
// estimate, so one stall (a garbage collection, a retry) moves it little.
const (
	speedAlpha     = 0.1
	speedAlphaFast = 0.5
	speedShift     = 1.25
	speedClip      = 4.0
	costAlpha      = 0.1
	costClip       = 4.0
	// fitDecay forgets old samples of the base fit: about the last 30
	// count.
	fitDecay = 1 - 1.0/30
	// fitMinSamples and fitMinSpread: the fit needs enough samples of
	// different costs before it says anything.
	fitMinSamples = 6
	fitMinSpread  = 0.1
	// failHold: how long a worker Envoy would have ejected is held back
	// from picks (the control plane drops it from the view well before).
	failHold = 5 * time.Second
	// staleAfter: a worker whose estimate is this many picks old is
	// treated as typical if its estimate says slower (so a worker once
	// mismeasured as slow gets work again and is measured again), and
	// its next sample counts fast.
	staleAfter = 64
)

// host returns the worker's entry, adding it.
func (t *Table) host(addr string) *Host {
	if h := t.Find(addr); h != nil {
		return h
	}
	t.Hosts = append(t.Hosts, Host{Addr: addr})
	return &t.Hosts[len(t.Hosts)-1]
}

// Find returns the worker's entry, or nil.
func (t *Table) Find(addr string) *Host {
	for i := range t.Hosts {
		if t.Hosts[i].Addr == addr {
			return &t.Hosts[i]
		}
	}
	return nil
}

// Add counts a request of the given cost sent to addr.
func (t *Table) Add(addr string, cost int64) {
	t.host(addr).Add(cost)
	t.Picks++
}

// Add counts a request of the given cost on the worker (the pick is the
// caller's to count).
func (h *Host) Add(cost int64) {
	h.Work += cost
	h.Requests++
}

// Take takes a request Add counted off the worker, teaching nothing.
func (h *Host) Take(cost int64) {
	h.Work -= cost
	h.Requests--
}

// Stale reports whether h's speed estimate is many picks old.
func (g *Global) Stale(h *Host) bool { return h.Samples > 0 && g.Picks-h.SampledAt > staleAfter }

// Done is the end of a request Add counted, however it ended: its cost
// leaves the worker's outstanding work. When the worker answered it
// (served), its service time (from sent or the worker's previous answer,
// to done; µs) teaches the worker's speed and the base fit. It returns the
// request's service time in ms (0 when not served).
func (t *Table) Done(addr string, cost, sent, done int64, served bool) float64 {
	h := t.host(addr)
	ms := h.End(cost, sent, done, served)
	if ms > 0 {
		t.Fit.Add(float64(cost), ms)
		t.Learn(h, cost, ms)
	}
	return ms
}

// End is Done's part in the worker's own record: the cost leaves, a
// success ends a run of failures, and the service time (ms, 0 when there
// is none to learn from) is returned for the caller to learn from (Learn,
// Fit.Add).
func (h *Host) End(cost, sent, done int64, served bool) float64 {
	h.Take(cost)
	if !served || cost <= 0 {
		return 0
	}
	h.Failures, h.GatewayFailures = 0, 0
	start := max(sent, h.LastDone)
	h.LastDone = max(h.LastDone, done)
	if done <= start {
		return 0
	}
	return float64(done-start) / 1000
}

// Move counts a request on the worker that took it instead of the one it
// was sent to: a retry (the first worker refused the connection or reset
// it) went to another. It is not a pick, and it teaches nothing: the
// first worker's failure is Envoy's to judge, the second has not answered
// yet.
func (t *Table) Move(from, to string, cost int64) {
	if from == to {
		return
	}
	t.host(from).Take(cost)
	t.host(to).Add(cost)
}

// Teach learns the worker's speed from a request's GPU time as the worker
// measured it (a video job's inference_time_s): no queue to untangle, and
// not part of the base fit, which image requests' send-to-answer times
// make.
func (t *Table) Teach(addr string, cost int64, ms float64) {
	t.Global.Teach(t.host(addr), cost, ms)
}

// Teach is Table.Teach on the worker's own record; it reports whether the
// sample was one to learn from.
func (g *Global) Teach(h *Host, cost int64, ms float64) bool {
	if cost <= 0 || !(ms > 0) || math.IsInf(ms, 0) {
		return false
	}
	g.Learn(h, cost, ms)
	return true
}

// Learn moves h's speed toward one sample: cost took ms (with the shared
// base fit and pick count; it changes only h).
func (g *Global) Learn(h *Host, cost int64, ms float64) {
	stale := g.Stale(h)
	h.SampledAt = g.Picks
	sample := ms / (float64(cost) + g.Fit.Base)
	if h.Samples == 0 || h.MsPerCost <= 0 {
		h.MsPerCost = sample
	} else {
		sample = min(max(sample, h.MsPerCost/speedClip), h.MsPerCost*speedClip)
		switch {
		case sample > h.MsPerCost*speedShift:
			h.Streak = max(h.Streak, 0) + 1
		case sample < h.MsPerCost/speedShift:
			h.Streak = min(h.Streak, 0) - 1
		default:
			h.Streak = 0
		}
		alpha := speedAlpha
		if stale || h.Streak >= 2 || h.Streak <= -2 {
			alpha = speedAlphaFast
		}
		h.MsPerCost = math.Exp((1-alpha)*math.Log(h.MsPerCost) + alpha*math.Log(sample))
	}
	h.Samples++
}

// Fail counts a 5xx answer of the worker at at (µs); gateway: a 502, 503
// or 504 (Envoy's answer for a reset or timeout, too).
func (t *Table) Fail(addr string, at int64, gateway bool) { t.host(addr).Fail(at, gateway) }

// Fail is Table.Fail on the worker's own record.
func (h *Host) Fail(at int64, gateway bool) {
	h.Failures++
	h.GatewayFailures++
	if !gateway {
		h.GatewayFailures = 0
	}
	h.FailedAt = at
}

// Answered notes an answer below 500 from the worker: like Envoy's outlier
// detection, it ends a run of failures.
func (t *Table) Answered(addr string) {
	if h := t.Find(addr); h != nil {
		h.Answered()
	}
}

// Answered is Table.Answered on the worker's own record; it reports
// whether it ended a run of failures.
func (h *Host) Answered() bool {
	if h.Failures == 0 && h.GatewayFailures == 0 {
		return false
	}
	h.Failures, h.GatewayFailures = 0, 0
	return true
}

// Failing reports whether h failed as often in a row as Envoy's ejection
// rule says, the last within failHold of now: it gets no picks meanwhile
// (and then one, to see whether it recovered). Envoy's outlier detection
// ejects it at that point, but override_host does not look at ejections,
// and the control plane's view drops it only a second or two later.
func Failing(h *Host, rule wire.Ejection, now int64) bool {
	if rule.Consecutive5xx <= 0 {
		rule.Consecutive5xx = 2
	}
	if rule.ConsecutiveGateway <= 0 {
		rule.ConsecutiveGateway = 2
	}
	failed := h.Failures >= rule.Consecutive5xx || h.GatewayFailures >= rule.ConsecutiveGateway
	return failed && now-h.FailedAt < failHold.Microseconds()
}

// overdueHold: a worker seen with an overdue request is held suspect this
// long after the last sighting (the filters look every SyncInterval), so
// it is back in rotation soon after that request ends.
const overdueHold = time.Second

// Overdue reports whether a request on h was seen running far past its
// expected time within overdueHold of now: the worker may hang (a stuck
// kernel answers /health all the same), so it gets no picks and no grants
// until the request ends.
func Overdue(h *Host, now int64) bool {
	return h.OverdueAt > 0 && now-h.OverdueAt < overdueHold.Microseconds()
}

// Add adds one sample (cost c took t ms) and, once the fit is
// determined, sets Base.
func (f *Fit) Add(c, t float64) {
	f.N = f.N*fitDecay + 1
	f.C = f.C*fitDecay + c
	f.T = f.T*fitDecay + t
	f.CC = f.CC*fitDecay + c*c
	f.CT = f.CT*fitDecay + c*t
	if f.N < fitMinSamples {
		return
	}
	mc, mt := f.C/f.N, f.T/f.N
	variance := f.CC/f.N - mc*mc
	if variance <= (fitMinSpread*mc)*(fitMinSpread*mc) {
		return // (nearly) one cost only: nothing to separate
	}
	b := (f.CT/f.N - mc*mt) / variance
	if b <= 0 {
		return
	}
	a := mt - b*mc
	f.Base = min(max(a/b, 0), 10*mc)
}

// Forget drops workers with nothing outstanding that the view no longer
// lists, so the table does not grow with every worker ever seen.
func (t *Table) Forget(keep func(addr string) bool) {
	t.Hosts = slices.DeleteFunc(t.Hosts, func(h Host) bool { return h.Requests == 0 && h.Work == 0 && !keep(h.Addr) })
}

// LearnCost folds the cost of a request its worker served into its task's
// average. A sample is first clipped to within costClip of the average,
// so one outlier moves it by at most costAlpha x (costClip-1) (+30 %),
// while a real change of workload is followed within a dozen requests.
func (g *Global) LearnCost(task string, cost float64) {
	if !(cost > 0) || math.IsInf(cost, 0) {
		return
	}
	for i := range g.Tasks {
		if tc := &g.Tasks[i]; tc.Task == task {
			cost = min(max(cost, tc.Avg/costClip), tc.Avg*costClip)
			tc.Avg += costAlpha * (cost - tc.Avg)
			tc.Samples++
			return
		}
	}
	g.Tasks = append(g.Tasks, TaskCost{Task: task, Avg: cost, Samples: 1})
}

// CostOf is the learned average cost of a task's requests, or def before
// any was seen.
func (g *Global) CostOf(task string, def int64) int64 {
	for _, tc := range g.Tasks {
		if tc.Task == task && tc.Avg >= 1 {
			return int64(math.Round(tc.Avg))
		}
	}
	return def
}

// Typical is the median learned speed over the workers with a fresh
// estimate, else over all that have one (0: none has).
func (t *Table) Typical() float64 {
	var fresh, all []float64
	for i := range t.Hosts {
		if h := &t.Hosts[i]; h.Samples > 0 && h.MsPerCost > 0 {
			all = append(all, h.MsPerCost)
			if !t.Stale(h) {
				fresh = append(fresh, h.MsPerCost)
			}
		}
	}
	if len(fresh) > 0 {
		return Median(fresh)
	}
	return Median(all)
}

// Median is the median of v (0 for none); it sorts v.
func Median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if n := len(v); n%2 == 1 {
		return v[n/2]
	} else {
		return (v[n/2-1] + v[n/2]) / 2
	}
}
