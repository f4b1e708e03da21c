package leastwork

import (
	"math"
	"slices"

	"github.com/diffrouter/diffusion-router/wire"
)

// Pool is the kind of worker a request needs, as the front routes say.
type Pool int

const (
	// PoolAny: any worker (native generations, everything else).
	PoolAny Pool = iota
	// PoolImage: image workers when there are any, else any worker.
	PoolImage
	// PoolVideo: video workers only.
	PoolVideo
)

// Eligible appends to dst (a caller's reused slice, may be nil) the
// indices of the view's workers a request may go to:
// the same choice the front routes make with the subset load balancer.
// Video needs a video worker; an image prefers image workers; a named model
// narrows to the workers that list it, unless none does (then the request
// takes the model-fallback route: any worker of its kind).
func Eligible(dst []int, v *wire.PickView, pool Pool, model string) []int {
	out := dst[:0]
	keep := func(ok func(wire.PickWorker) bool) {
		out = out[:0]
		for i, w := range v.Workers {
			if ok(w) {
				out = append(out, i)
			}
		}
	}
	switch pool {
	case PoolVideo:
		keep(func(w wire.PickWorker) bool { return w.Video })
	case PoolImage:
		keep(func(w wire.PickWorker) bool { return w.Image })
		if len(out) == 0 {
			keep(func(wire.PickWorker) bool { return true })
		}
	default:
		keep(func(wire.PickWorker) bool { return true })
	}
	if model == "" {
		return out
	}
	named := 0
	for _, i := range out {
		if slices.Contains(v.Workers[i].Models, model) {
			named++
		}
	}
	if named == 0 {
		return out
	}
	kept := out[:0]
	for _, i := range out {
		if slices.Contains(v.Workers[i].Models, model) {
			kept = append(kept, i)
		}
	}
	return kept
}

// Choice is a pick: the worker that would finish the request first, and
// the next best (for a retry); Second is empty with one candidate.
type Choice struct {
	First, Second string
	// Expected is the first choice's expected completion time, in ms.
	Expected float64
}

// Choose picks, among the candidates (indices into v.Workers), the worker
// that would finish this request first: the smallest (outstanding work +
// cost + base x (outstanding requests + 1)) x ms per cost. Outstanding
// work and requests are this Envoy's (the table) plus the other Envoys'
// (the view). A worker's speed is what this Envoy learned, else what the
// control plane learned, else the median of the workers this Envoy knows
// (a new worker is taken as typical, and so is one whose slow estimate is
// stale); with several Envoys, only what the control plane learned. A
// worker Envoy would have ejected in the last seconds is not picked. Near ties (within tieTolerance of
// the best) go to the first such candidate at or after rot (callers rotate
// it), so equal workers share the work even though their learned speeds
// differ by noise, and each keeps being measured.
func Choose(v *wire.PickView, cands []int, t *Table, cost int64, rot int, now int64) (Choice, bool) {
	// A worker failing right now is left out; with none left, no pick
	// (Envoy's own policy, which sees its ejections, routes).
	cands = usable(v, cands, t, now)
	n := len(cands)
	if n == 0 {
		return Choice{}, false
	}
	at := func(k int) int { return cands[(k+rot%n+n)%n] }
	e := newEstimator(v, cands, t)
	scores := make([]float64, n)
	for k := range n {
		scores[k] = e.finish(v.Workers[at(k)], cost)
	}
	first, second := best(scores)
	c := Choice{First: v.Workers[at(first)].Addr, Expected: scores[first]}
	if second >= 0 {
		c.Second = v.Workers[at(second)].Addr
	}
	return c, true
}

// usable drops the candidates failing right now (see Failing), or with a
// request far overdue (see Overdue).
func usable(v *wire.PickView, cands []int, t *Table, now int64) []int {
	return slices.DeleteFunc(slices.Clone(cands), func(i int) bool {
		h := t.Find(v.Workers[i].Addr)
		return h != nil && (Failing(h, v.Ejection, now) || Overdue(h, now))
	})
}

// estimator turns a worker's outstanding work into its expected finish
// time for one pick: the speeds and base it uses are decided once.
type estimator struct {
	t *Table
	// shared: several Envoys each see part of every worker's queue, so
	// only the control plane's estimates (from all their completions) are
	// sound; one Envoy's own are as good and fresher.
	shared  bool
	typical float64 // ms per cost of a worker with no estimate
	base    float64
}

func newEstimator(v *wire.PickView, cands []int, t *Table) estimator {
	e := estimator{t: t, shared: v.Envoys > 1}
	var fleet []float64
	for _, i := range cands {
		if m := v.Workers[i].MsPerCost; m > 0 {
			fleet = append(fleet, m)
		}
	}
	e.typical = t.Typical()
	if e.shared || e.typical == 0 {
		e.typical = Median(fleet)
	}
	if e.typical == 0 {
		e.typical = 1
	}
	e.base = t.Fit.Base
	if e.shared || t.Fit.N < fitMinSamples {
		e.base = v.Base
	}
	return e
}

// finish is when w would finish a request of this cost (ms): the work
// ahead of it and its own, at the worker's speed.
func (e estimator) finish(w wire.PickWorker, cost int64) float64 {
	mpc := e.typical
	if w.MsPerCost > 0 {
		mpc = w.MsPerCost
	}
	work, reqs := w.RemoteWork+cost, w.RemoteRequests+1
	// Requests the worker says it holds that no Envoy counts (another
	// client's) are taken to be of the size its kind of requests usually
	// are, this one's at least (in float: their product can pass int64).
	foreign := float64(max(w.ForeignRequests, 0)) * float64(max(cost, e.t.CostOf(foreignTask(w), cost)))
	reqs += max(w.ForeignRequests, 0)
	if h := e.t.Find(w.Addr); h != nil {
		work += h.Work
		reqs += h.Requests
		if !e.shared && h.Samples > 0 && h.MsPerCost > 0 && !(e.t.Stale(h) && h.MsPerCost > e.typical) {
			mpc = h.MsPerCost
		}
	}
	return (float64(max(work, 0)) + foreign + e.base*float64(max(reqs, 0))) * mpc
}

// best is the first score within tieTolerance of the lowest, and the
// lowest of the others (-1 with one score).
func best(scores []float64) (first, second int) {
	low := math.Inf(1)
	for _, s := range scores {
		low = min(low, s)
	}
	first, second = -1, -1
	for k, s := range scores {
		if first < 0 && s <= low*(1+tieTolerance) {
			first = k
		} else if second < 0 || s < scores[second] {
			second = k
		}
	}
	return first, second
}

// SampleSize is how many candidates a pick weighs at most. Up to it, every
// candidate is weighed (the exact least-work pick); beyond it, that many
// drawn at random, so a pick costs the same with a thousand workers as
// with sixteen. Sixteen draws from a large fleet almost never miss all of
// its idle or nearly idle workers (the power of d choices).
const SampleSize = 16

// Sample appends to dst the candidates a pick weighs: all of them up to
// SampleSize, else SampleSize distinct ones drawn with the caller's
// random state (xorshift; any nonzero seed).
func Sample(dst, cands []int, rnd *uint64) []int {
	dst = dst[:0]
	if len(cands) <= SampleSize {
		return append(dst, cands...)
	}
	if *rnd == 0 {
		*rnd = 0x9e3779b97f4a7c15
	}
	for len(dst) < SampleSize {
		x := *rnd
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		*rnd = x
		c := cands[x%uint64(len(cands))]
		if !slices.Contains(dst, c) {
			dst = append(dst, c)
		}
	}
	return dst
}

// tieTolerance: scores this close to the best count as ties.
const tieTolerance = 0.1

// foreignTask names the task class whose learned average cost prices a
// worker's foreign requests: a video worker's are taken for videos.
func foreignTask(w wire.PickWorker) string {
	if w.Video {
		return "video"
	}
	return "image"
}

// Alone is how long (ms) the worker at index i of the view would take for
// a request of this cost with nothing else on it, by the control plane's
// estimate of its speed; 0 when its speed is not learned yet (the queue
// then does not plan around it).
func Alone(v *wire.PickView, i int, cost int64) float64 {
	w := v.Workers[i]
	if w.MsPerCost <= 0 {
		return 0
	}
	return (float64(max(cost, 1)) + v.Base) * w.MsPerCost
}
