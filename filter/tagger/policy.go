package tagger

import (
	"fmt"

	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/wire"
)

// A routingPolicy chooses a generation's worker among the eligible ones
// and counts the request's cost there (picker.count). The plugin chooses
// its policy once, when it starts (newPolicy). The steps every policy
// shares come before it (picker.choose: a fresh view, the workers of the
// request's kind and model, the cost estimate); a policy that answers
// pickNone leaves the request to Envoy's own load balancing, which is
// also all that happens under the policies the filter does not carry out
// (least-request, random: the filter then runs without a picker).
type routingPolicy interface {
	choose(p *picker, r *pickRequest) (leastwork.Choice, pickStatus)
}

// pickRequest is what a policy knows of the request it places.
type pickRequest struct {
	view *wire.PickView
	// cands are the eligible workers, as indices into view.Workers
	// (never empty).
	cands []int
	pool  leastwork.Pool
	model string
	cost  int64
	// freeOnly: the router-owned queue runs, so only a free slot will do
	// (pickFull: the request asks the queue for its turn).
	freeOnly bool
	now      int64 // µs
}

// newPolicy is the filter's implementation of a routing policy. A new
// policy is a file with its type and one case here (and its line in
// wire.Policy.Spec).
func newPolicy(name wire.Policy) (routingPolicy, error) {
	switch name {
	case wire.PolicyLeastWork:
		return leastWork{}, nil
	case wire.PolicyRoundRobin:
		return roundRobin{}, nil
	}
	return nil, fmt.Errorf("the filter does not pick workers by %q", name)
}
