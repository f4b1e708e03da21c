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
	cands = slices.DeleteFunc(slices.Clone(cands), func(i int) bool {
		h := t.Find(v.Workers[i].Addr)
		return h != nil && Failing(h, v.Ejection, now)
	})
	if len(cands) == 0 {
		return Choice{}, false
	}
	// Several Envoys each see part of every worker's queue, so only the
	// control plane's estimates (from all their completions) are sound;
	// one Envoy's own are as good and fresher.
	shared := v.Envoys > 1
	var fleet []float64
	for _, i := range cands {
		if m := v.Workers[i].MsPerCost; m > 0 {
			fleet = append(fleet, m)
		}
	}
	typical := t.Typical()
	if shared || typical == 0 {
		typical = Median(fleet)
	}
	if typical == 0 {
		typical = 1
	}
	base := t.Fit.Base
	if shared || t.Fit.N < fitMinSamples {
		base = v.Base
	}
	n := len(cands)
	scores := make([]float64, n)
	bestScore := math.Inf(1)
	for k := range n {
		i := cands[(k+rot%n+n)%n]
		w := v.Workers[i]
		mpc := typical
		if w.MsPerCost > 0 {
			mpc = w.MsPerCost
		}
		work, reqs := w.RemoteWork+cost, w.RemoteRequests+1
		// Requests the worker says it holds that no Envoy counts
		// (another client's) are taken to be of the size its kind of
		// requests usually are, this one's at least (in float: their
		// product can pass int64).
		foreign := float64(max(w.ForeignRequests, 0)) * float64(max(cost, t.CostOf(foreignTask(w), cost)))
		reqs += max(w.ForeignRequests, 0)
		if h := t.Find(w.Addr); h != nil {
			work += h.Work
			reqs += h.Requests
			if !shared && h.Samples > 0 && h.MsPerCost > 0 && !(t.Stale(h) && h.MsPerCost > typical) {
				mpc = h.MsPerCost
			}
		}
		scores[k] = (float64(max(work, 0)) + foreign + base*float64(max(reqs, 0))) * mpc
		bestScore = min(bestScore, scores[k])
	}
	first, second := -1, -1
	for k := range n {
		if first < 0 && scores[k] <= bestScore*(1+tieTolerance) {
			first = k
		} else if second < 0 || scores[k] < scores[second] {
			second = k
		}
	}
	at := func(k int) int { return cands[(k+rot%n+n)%n] }
	c := Choice{First: v.Workers[at(first)].Addr, Expected: scores[first]}
	if second >= 0 {
		c.Second = v.Workers[at(second)].Addr
	}
	return c, true
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
