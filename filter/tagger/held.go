package tagger

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"time"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"

	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/wire"
)

// Video jobs the router holds, the filter's side. A video create that
// finds no free slot is not paused here: it goes on to the control plane
// (wire.HeaderHeld), which stores it, answers the client at once and
// sends the job through an Envoy when the queue grants it a worker
// (wire.HeaderForward names that worker). Calls about a held job's id,
// and plain job lists (which must show waiting jobs), go to the control
// plane as well.

// readForward reads a request the control plane sent through this Envoy:
// it names the worker a held job was granted, or none (a list the
// control plane merges). A token that does not check out is refused: the
// header is the router's own, and a held job sent with a stale one must
// not be held again.
func (c *httpContext) readForward() (handled bool) {
	v, err := proxywasm.GetHttpRequestHeader(wire.HeaderForward)
	if err != nil || v == "" {
		return false
	}
	_ = proxywasm.RemoveHttpRequestHeader(wire.HeaderForward)
	if c.p.picker == nil {
		return c.refuse(403, wire.HeaderForward+" is the router's own header; this Envoy does not pick workers")
	}
	f, err := wire.CheckForward(c.p.picker.secret, v, time.UnixMicro(nowMicro()))
	if err != nil {
		return c.refuse(403, err.Error())
	}
	c.forwarded, c.forwardTo = true, f.Worker
	if f.Worker != "" {
		// The held job's wait in the router: a span tag, and the
		// worker's to log, as for a request granted from the queue.
		_ = proxywasm.ReplaceHttpRequestHeader(wire.HeaderQueueMs, strconv.FormatInt(f.WaitedMs, 10))
	}
	return false
}

// holdsJob reports whether a request that found no free slot is a video
// create the control plane takes instead.
func (c *httpContext) holdsJob() bool {
	return c.p.cfg.HoldJobs && c.task == TaskVideo && c.method == "POST" && !c.forwarded
}

// hold sends the request to the control plane's held jobs with its ask
// (wire.HeaderHeldAsk): what the queue takes of it, and what this Envoy
// counts now on the workers it weighed, signed as a queue call is.
func (c *httpContext) hold(cost int64) {
	c.rewrite = false // the control plane's answer carries its own ids
	body, err := json.Marshal(c.queueRequest(cost))
	if err != nil {
		c.fail("held ask", err)
		return
	}
	at := nowMicro() / 1000
	for _, h := range [][2]string{
		{wire.HeaderHeldAsk, base64.RawURLEncoding.EncodeToString(body)},
		{wire.HeaderSyncTime, strconv.FormatInt(at, 10)},
		{wire.HeaderSyncSignature, wire.SyncSignature(c.p.picker.secret, at, body)},
		{wire.HeaderHeld, "create"},
	} {
		if err := proxywasm.ReplaceHttpRequestHeader(h[0], h[1]); err != nil {
			c.fail("set "+h[0], err)
			return
		}
	}
	c.p.picker.held.Increment(1)
}

// toHeld sends a call about a held job, or a plain job list, to the
// control plane.
func (c *httpContext) toHeld(what string) {
	c.rewrite, c.list = false, false
	if err := proxywasm.ReplaceHttpRequestHeader(wire.HeaderHeld, what); err != nil {
		c.fail("set "+wire.HeaderHeld, err)
	}
}

// bindForwarded sends a held job's create to the worker the queue granted
// it, counted there as a grant is; the answer names this Envoy, whose
// reports count the job from now on.
func (c *httpContext) bindForwarded(cost int64, known bool) {
	c.tagQueue()
	c.bind(leastwork.Choice{First: c.forwardTo}, c.estimate(cost, known), known, true)
}
