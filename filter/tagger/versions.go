package tagger

import (
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"

	"github.com/diffrouter/diffusion-router/wire"
)

// Weight-version rules, the filter's side: a generation that names the
// weights that must serve it (wire.HeaderPinVersion, wire.HeaderMinVersion)
// always asks the router's queue, which alone knows every worker's version
// and the fleet's history; the filter never picks it itself, also not when
// the control plane is away (then it is refused: a rule that cannot be
// applied is not silently dropped).

// versionHeaders reads a generation's version rules; a bad value, or one
// given twice, is answered 400, and so is a rule on a router without its
// queue (handled: the caller returns ActionPause).
func (c *httpContext) versionHeaders() (handled bool) {
	if name := repeatedHeader(wire.HeaderPinVersion, wire.HeaderMinVersion, wire.HeaderGroup); name != "" {
		return c.refuse(400, name+" was given more than once; send it once")
	}
	pin, _ := proxywasm.GetHttpRequestHeader(wire.HeaderPinVersion)
	min, _ := proxywasm.GetHttpRequestHeader(wire.HeaderMinVersion)
	group, _ := proxywasm.GetHttpRequestHeader(wire.HeaderGroup)
	if pin == "" && min == "" && group == "" {
		return false
	}
	for h, v := range map[string]string{wire.HeaderPinVersion: pin, wire.HeaderMinVersion: min} {
		if v != "" {
			if err := wire.CheckVersion(h, v); err != nil {
				return c.refuse(400, err.Error())
			}
		}
	}
	if group != "" {
		if err := wire.CheckGroup(group); err != nil {
			return c.refuse(400, err.Error())
		}
	}
	if c.p.picker == nil || !c.p.cfg.Queue {
		return c.refuse(400, rulesHeaders+" are applied by the router-owned queue, which this router runs without (--queue, with least-work routing)")
	}
	c.pinVersion, c.minVersion, c.group = pin, min, group
	return false
}

// rulesHeaders names the headers of the version rules, for refusals.
const rulesHeaders = wire.HeaderPinVersion + ", " + wire.HeaderMinVersion + " and " + wire.HeaderGroup

func (c *httpContext) versioned() bool {
	return c.pinVersion != "" || c.minVersion != "" || c.group != ""
}

// queueVersioned sends a request with version rules to the queue (a video
// create to the held jobs, which queue it); it reports whether the request
// now waits. One the queue cannot be asked about is refused 503.
func (c *httpContext) queueVersioned(cost int64, known bool) (waits bool) {
	// No pick weighed workers for it: the records an earlier pick read
	// are not this Envoy's count now, and go with no ask.
	c.p.picker.tab.Hosts = c.p.picker.tab.Hosts[:0]
	cost = c.estimate(cost, known)
	if c.holdsJob() {
		c.hold(cost)
		return false
	}
	if c.enqueue(cost, known) {
		return true
	}
	c.refuse(503, "the router's control plane, which applies "+rulesHeaders+", cannot be asked; try again")
	return true
}

// estimate is a request's cost: its own when known, else its task's
// average here.
func (c *httpContext) estimate(cost int64, known bool) int64 {
	if known {
		return cost
	}
	pk := c.p.picker
	pk.tab.Global = *pk.readGlobal()
	return pk.tab.CostOf(string(c.task), defaultCost(c.task))
}
