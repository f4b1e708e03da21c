package pick

import (
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

// Eligible lists the indices of the view's workers a request may go to:
// the same choice the front routes make with the subset load balancer.
// Video needs a video worker; an image prefers image workers; a named model
// narrows to the workers that list it, unless none does (then the request
// takes the model-fallback route: any worker of its kind).
func Eligible(v *wire.PickView, pool Pool, model string) []int {
	out := make([]int, 0, len(v.Workers))
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
	var named []int
	for _, i := range out {
		if slices.Contains(v.Workers[i].Models, model) {
			named = append(named, i)
		}
	}
	if len(named) > 0 {
		return named
	}
	return out
}

// Choice is a pick: the worker that would finish the request first, and
// the next best (for a retry); Second is empty with one candidate.
type Choice struct {
	First, Second string
	// Expected is the first choice's expected completion time, in ms.
	Expected float64
}

// Choose picks, among the candidates (indices into v.Workers), the worker
// with the smallest (outstanding work + cost) x ms per cost: the one that
// would finish this request first. Outstanding work is this Envoy's (the
// table) plus the other Envoys' (the view). A worker's speed is what this
// Envoy learned, else what the fleet learned, else the median of the
// workers this Envoy knows (a new worker is taken as typical). Ties go to
// the candidate at or after rot (callers rotate it), so idle equal workers
// share the work.
func Choose(v *wire.PickView, cands []int, t *Table, cost int64, rot int) (Choice, bool) {
	if len(cands) == 0 {
		return Choice{}, false
	}
	typical := t.MedianMsPerCost()
	if typical == 0 {
		var fleet []float64
		for _, i := range cands {
			if m := v.Workers[i].MsPerCost; m > 0 {
				fleet = append(fleet, m)
			}
		}
		typical = Median(fleet)
	}
	if typical == 0 {
		typical = 1
	}
	best, second := -1, -1
	var bestScore, secondScore float64
	n := len(cands)
	for k := range n {
		i := cands[(k+rot%n+n)%n]
		w := v.Workers[i]
		mpc := typical
		work := w.RemoteWork + cost
		if h := t.Find(w.Addr); h != nil {
			work += h.Work
			if h.Samples > 0 && h.MsPerCost > 0 {
				mpc = h.MsPerCost
			} else if w.MsPerCost > 0 {
				mpc = w.MsPerCost
			}
		} else if w.MsPerCost > 0 {
			mpc = w.MsPerCost
		}
		score := float64(max(work, 0)) * mpc
		switch {
		case best < 0 || score < bestScore:
			second, secondScore = best, bestScore
			best, bestScore = i, score
		case second < 0 || score < secondScore:
			second, secondScore = i, score
		}
	}
	c := Choice{First: v.Workers[best].Addr, Expected: bestScore}
	if second >= 0 {
		c.Second = v.Workers[second].Addr
	}
	return c, true
}
