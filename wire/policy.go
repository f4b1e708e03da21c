package wire

import "fmt"

// Policy names a routing policy (--routing-algorithm). The flags, the
// translator and the filter use this one name.
type Policy string

const (
	// PolicyLeastWork: the Wasm filter picks the worker that would finish
	// the request first (outstanding estimated work over learned speed)
	// and Envoy's override_host policy sends it there; least-request is
	// the fallback when the filter names no worker.
	PolicyLeastWork    Policy = "least-work"
	PolicyLeastRequest Policy = "least-request"
	PolicyRoundRobin   Policy = "round-robin"
	PolicyRandom       Policy = "random"
)

// PolicySpec says who carries a policy out.
type PolicySpec struct {
	// FilterPicks: the Wasm filter names each generation's worker when it
	// runs (its implementation: filter/tagger's newPolicy).
	FilterPicks bool
	// NeedsFilter: without the filter the policy cannot run.
	NeedsFilter bool
	// Envoy is Envoy's own load-balancing policy (least-request,
	// round-robin or random) for what the filter does not pick.
	Envoy Policy
	// Queue: the router-owned queue can run with it (its grants are
	// least-work picks).
	Queue bool
}

// Spec is how p is carried out; a new policy is one case here.
func (p Policy) Spec() (PolicySpec, error) {
	switch p {
	case PolicyLeastWork:
		return PolicySpec{FilterPicks: true, NeedsFilter: true, Envoy: PolicyLeastRequest, Queue: true}, nil
	case PolicyRoundRobin:
		// With the filter: one strict cycle over all of an Envoy's
		// threads, where Envoy's own keeps one per thread.
		return PolicySpec{FilterPicks: true, Envoy: PolicyRoundRobin}, nil
	case PolicyLeastRequest, PolicyRandom:
		return PolicySpec{Envoy: p}, nil
	}
	return PolicySpec{}, fmt.Errorf("unknown routing algorithm %q (want least-request, least-work, round-robin or random)", string(p))
}

// ParsePolicy accepts the spellings the Python routers accept, and
// least-work.
func ParsePolicy(s string) (Policy, error) {
	p := Policy(s)
	if _, err := p.Spec(); err != nil {
		return "", err
	}
	return p, nil
}
