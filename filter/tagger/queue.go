package tagger

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"

	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/wire"
)

// The router-owned queue, the filter's side. A request that finds no free
// slot (or requests already waiting) is paused and asks the control plane
// for its turn with one long-polled callout; the answer names its worker
// and the request goes on. A client that leaves meanwhile is taken out of
// the queue (Envoy does not cancel the callout). If the control plane
// cannot be asked, or answers anything but a turn or a refusal, the
// request is picked here at once, as without the queue: it is never failed
// or held because the queue's owner is away.

// queueHeaders reads a picked request's priority and tenant headers. A bad
// value, or either header given twice, is answered 400 here (handled: the
// caller returns ActionPause).
func (c *httpContext) queueHeaders() (handled bool) {
	if name := repeatedHeader(wire.HeaderPriority, wire.HeaderTenant); name != "" {
		return c.refuse(400, name+" was given more than once; send it once")
	}
	raw, _ := proxywasm.GetHttpRequestHeader(wire.HeaderPriority)
	prio, err := wire.ParsePriority(strings.TrimSpace(raw))
	if err != nil {
		return c.refuse(400, err.Error())
	}
	if c.p.cfg.IgnoreClientPriority {
		prio = 0
	}
	c.priority = min(prio, c.p.cfg.MaxClientPriority)
	if t, _ := proxywasm.GetHttpRequestHeader(wire.HeaderTenant); t != "" {
		if !wire.ValidTenant(t) {
			return c.refuse(400, wire.HeaderTenant+" must be 1 to "+strconv.Itoa(wire.MaxTenantLen)+" letters, digits or ._:@-")
		}
		if !c.p.cfg.IgnoreClientTenant {
			c.tenant = t
		}
	}
	return false
}

// repeatedHeader is the first of names the request carries more than
// once ("" if none): which of two values counts is not for Envoy's order
// to decide.
func repeatedHeader(names ...string) string {
	hs, err := proxywasm.GetHttpRequestHeaders()
	if err != nil {
		return ""
	}
	for _, name := range names {
		n := 0
		for _, h := range hs {
			if strings.EqualFold(h[0], name) {
				n++
			}
		}
		if n > 1 {
			return name
		}
	}
	return ""
}

// refuse answers the request here, before any worker saw it.
func (c *httpContext) refuse(code uint32, msg string) bool {
	c.pickPending = false
	_ = proxywasm.SendHttpResponse(code, textHeaders, []byte(msg), -1)
	return true
}

// tagQueue passes the request's priority and tenant on to its worker (and
// Envoy's access log).
func (c *httpContext) tagQueue() {
	if c.tenant == "" {
		c.tenant = wire.DefaultTenant
	}
	_ = proxywasm.ReplaceHttpRequestHeader(wire.HeaderPriority, strconv.Itoa(c.priority))
	_ = proxywasm.ReplaceHttpRequestHeader(wire.HeaderTenant, c.tenant)
}

// enqueue asks the control plane for the request's turn; it reports
// whether the request now waits (false: the queue cannot be asked).
func (c *httpContext) enqueue(cost int64, known bool) bool {
	pk := c.p.picker
	qr := c.queueRequest(cost)
	ticket := qr.Ticket
	body, err := json.Marshal(qr)
	if err != nil {
		return false
	}
	timeout := uint32(math.MaxInt32)
	if c.p.cfg.QueueWaitMs > 0 {
		timeout = uint32(c.p.cfg.QueueWaitMs)
	}
	if _, err := proxywasm.DispatchHttpCall(pk.cluster, pk.signedHeaders(wire.PathQueue, body), body, nil, timeout, c.onTurn); err != nil {
		proxywasm.LogWarnf("diffusion-tagger: queue: %v; picking here", err)
		return false
	}
	c.ticket, c.waiting, c.queuedCost, c.queuedKnown, c.queuedAt = ticket, true, cost, known, nowMicro()
	pk.queued.Increment(1)
	return true
}

// queueRequest is the request as the queue takes it, with what this Envoy
// counts now on the workers the pick weighed (the records choose read):
// the queue must not grant a slot taken here since the last report.
func (c *httpContext) queueRequest(cost int64) wire.QueueRequest {
	pk := c.p.picker
	qr := wire.QueueRequest{Node: pk.envoyID(), Ticket: newRequestID()[:24], Priority: c.priority, Tenant: c.tenant,
		Cost: cost, Pool: int(poolOf(c.task)), Model: c.model, Hosts: []wire.HostReport{},
		Version: c.pinVersion, MinVersion: c.minVersion, Group: c.group}
	for _, h := range pk.tab.Hosts {
		qr.Hosts = append(qr.Hosts, hostReport(h))
	}
	return qr
}

// onTurn is the control plane's answer: the request's worker, a refusal,
// or (anything else) no answer from the queue, which picks here.
func (c *httpContext) onTurn(_, bodySize, _ int) {
	c.waiting = false
	hs, _ := proxywasm.GetHttpCallResponseHeaders()
	body, _ := proxywasm.GetHttpCallResponseBody(0, bodySize)
	switch status := httpStatus(hs); status {
	case "200":
		var g wire.QueueGrant
		if json.Unmarshal(body, &g) == nil && g.Worker != "" {
			c.p.picker.granted.Increment(1)
			// How long it waited: a span tag, and the worker's to log.
			_ = proxywasm.ReplaceHttpRequestHeader(wire.HeaderQueueMs, strconv.FormatInt(max(nowMicro()-c.queuedAt, 0)/1000, 10))
			c.bind(leastwork.Choice{First: g.Worker, Second: g.Second}, c.queuedCost, c.queuedKnown, true)
			_ = proxywasm.ResumeHttpRequest()
			return
		}
	case "429", "504", "409":
		code, _ := strconv.Atoi(status)
		headers := textHeaders
		if ra := headerValue(hs, "retry-after"); ra != "" {
			headers = append([][2]string{{"retry-after", ra}}, textHeaders...)
		}
		c.p.picker.queueRefused.Increment(1)
		_ = proxywasm.SendHttpResponse(uint32(code), headers, []byte(errorText(body)), -1)
		return
	}
	// The queue's owner is away (or confused): today's pick, at once;
	// a request with version rules is refused rather than served by
	// weights it did not ask for.
	c.p.picker.queueFallbacks.Increment(1)
	if c.versioned() {
		c.refuse(503, "the router's control plane, which applies "+rulesHeaders+", did not answer; try again")
		return
	}
	if choice, cost, st := c.p.picker.choose(c.task, c.model, c.queuedCost, c.queuedKnown, false); st == pickMade {
		c.bind(choice, cost, c.queuedKnown, false)
	} else {
		c.p.picker.unpicked.Increment(1)
	}
	_ = proxywasm.ResumeHttpRequest()
}

// leaveQueue takes a request whose client left out of the queue: fire and
// forget (a callout made as the stream ends is sent, its answer dropped).
func (c *httpContext) leaveQueue() {
	if !c.waiting {
		return
	}
	c.waiting = false
	pk := c.p.picker
	body, err := json.Marshal(wire.QueueCancel{Node: pk.envoyID(), Ticket: c.ticket})
	if err != nil {
		return
	}
	if _, err := proxywasm.DispatchHttpCall(pk.cluster, pk.signedHeaders(wire.PathQueueCancel, body), body, nil, 5000,
		func(int, int, int) {}); err != nil {
		proxywasm.LogWarnf("diffusion-tagger: queue cancel: %v", err)
	}
}

// headerValue is a header of a callout's answer ("" if absent).
func headerValue(hs [][2]string, name string) string {
	for _, h := range hs {
		if strings.EqualFold(h[0], name) {
			return h[1]
		}
	}
	return ""
}

// errorText is the "error" of a JSON answer, or the answer itself.
func errorText(body []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return e.Error
	}
	return strings.TrimSpace(string(body))
}
