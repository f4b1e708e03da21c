package queue

import "github.com/diffrouter/diffusion-router/leastwork"

// kind is the serving rule of a request's kind: a video request needs a
// video worker, an image prefers image workers, a named model the workers
// that list it (the choice the front routes make, leastwork.Eligible). It
// reads the whole view, not cands: it comes first.
func kind(d *dispatch, r *Request, _ []int) []int {
	return leastwork.Eligible(nil, &d.v, r.Pool, r.Model)
}
