package tagger

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/diffrouter/diffusion-router/jobid"
	"github.com/diffrouter/diffusion-router/wire"
)

// noteAnswer is what every answer tells the filter: the pick's cost
// leaves its worker, a job's end, errors, the router's time, the weight
// version that made a job.
func (c *httpContext) noteAnswer(status string) {
	if c.sent != nil {
		c.releaseAnswered(status)
	}
	switch {
	case c.job == "" || c.p.picker == nil:
	case status == "404":
		c.p.picker.endJob(c.job, true, 0) // gone (the worker restarted)
	case c.method == "DELETE" && strings.HasPrefix(status, "2"):
		// Forgotten, but it may still run: counted until the worker says
		// it is idle, or its expected time passes.
		c.p.picker.deleteJob(c.job, nowMicro())
	}
	if code, err := strconv.Atoi(status); err == nil && code >= 500 {
		c.p.metrics.errors[c.task].Increment(1)
	}
	elapsed := time.Since(c.start).Milliseconds()
	upstream := int64(-1)
	if v, err := proxywasm.GetHttpResponseHeader("x-envoy-upstream-service-time"); err == nil && v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			upstream = n
			c.p.metrics.upstreamMS.Record(uint64(max(n, 0)))
		}
	}
	routerMS := elapsed
	if upstream >= 0 {
		routerMS = max(elapsed-upstream, 0)
	}
	c.p.metrics.routerMS.Record(uint64(routerMS))
	_ = proxywasm.ReplaceHttpResponseHeader(wire.HeaderRouterMS, strconv.FormatInt(routerMS, 10))
	if c.model != "" && c.p.cfg.FallbackRoute != "" {
		c.noteFallback()
	}
	if c.forwardTo != "" && c.p.picker != nil {
		// The control plane sent a held job here: this Envoy's reports
		// count it from now on.
		_ = proxywasm.ReplaceHttpResponseHeader(wire.HeaderNode, c.p.picker.envoyID())
	}
	if c.version != "" {
		// The job was made by the weights its id names, whatever its
		// worker holds now.
		_ = proxywasm.ReplaceHttpResponseHeader(wire.HeaderWeightVersion, c.version)
	}
}

func (c *httpContext) OnHttpResponseHeaders(_ int, endOfStream bool) types.Action {
	status, _ := proxywasm.GetHttpResponseHeader(":status")
	c.noteAnswer(status)
	if !c.rewrite || endOfStream || !strings.HasPrefix(status, "2") {
		c.rewrite = false
		return types.ActionContinue
	}
	ct, _ := proxywasm.GetHttpResponseHeader("content-type")
	if !strings.Contains(strings.ToLower(ct), "json") {
		c.rewrite = false
		return types.ActionContinue
	}
	if c.jobKey == "" {
		worker, _ := proxywasm.GetHttpResponseHeader(wire.HeaderWorker)
		if worker == "" {
			c.rewrite = false
			return types.ActionContinue
		}
		c.jobKey = jobid.WorkerKey(worker)
		if c.method == "POST" {
			// A new job or image: made by the weights its worker holds
			// now, which its ids keep naming after the worker moves on.
			c.version, _ = proxywasm.GetHttpResponseHeader(wire.HeaderWeightVersion)
			c.refID = ""
		}
	}
	if cl, _ := proxywasm.GetHttpResponseHeader("content-length"); cl != "" {
		n, err := strconv.Atoi(cl)
		switch {
		case err == nil && n <= wire.MaxHeldBytes:
		case c.task != TaskVideo && c.task != TaskVideoPoll:
			// An image answer this large carries its images inline
			// (base64): nothing in it is polled later.
			c.rewrite = false
			return types.ActionContinue
		default:
			// A video job too large to hold: its id could not be
			// signed, and an unsigned id can never be polled. Say so
			// instead.
			return c.refuseUnsignable(cl)
		}
	}
	// The body changes length once its ids are wrapped.
	_ = proxywasm.RemoveHttpResponseHeader("content-length")
	if c.task == TaskVideo || c.task == TaskVideoPoll {
		// Held with its body: an answer without a length that turns out
		// too large can still be refused rather than sent unsigned.
		return types.ActionPause
	}
	return types.ActionContinue
}

// refuseUnsignable answers 502 for a video answer too large to hold: its
// job ids could not be signed, and an unsigned id can never be polled.
func (c *httpContext) refuseUnsignable(size string) types.Action {
	c.rewrite = false
	c.p.metrics.bodiesSkipped.Increment(1)
	_ = proxywasm.SendHttpResponse(502, textHeaders, []byte(fmt.Sprintf("the worker's answer (%s bytes) is over the %d bytes the router holds to sign the job ids in it; the job may run on the worker, but it cannot be reached through the router (shorten the prompt)", size, wire.MaxHeldBytes)), -1)
	return types.ActionPause
}

func (c *httpContext) OnHttpResponseBody(bodySize int, endOfStream bool) types.Action {
	// An answer with ids is held whole whatever max_body_bytes says (that
	// bounds what is read of requests): an id passed on unsigned could
	// never be polled.
	if c.rewrite && bodySize > wire.MaxHeldBytes && (c.task == TaskVideo || c.task == TaskVideoPoll) {
		return c.refuseUnsignable("over " + strconv.Itoa(wire.MaxHeldBytes))
	}
	body, action, ready := c.holdBody(&c.rewrite, bodySize, wire.MaxHeldBytes, endOfStream, proxywasm.GetHttpResponseBody, "read response body")
	if !ready {
		return action
	}
	c.trackJob(body)
	if c.list && c.lookUpVersions(body) {
		return types.ActionPause // signed once the book answers
	}
	out, ok := c.signAnswer(body)
	if ok && c.method == "POST" && c.task == TaskVideo && c.recordJob(out) {
		return types.ActionPause // passed on once the book has the job
	}
	return types.ActionContinue
}

// signAnswer wraps the job ids in an answer body and returns the body as
// the client gets it (ok false if it could not be read).
func (c *httpContext) signAnswer(body []byte) ([]byte, bool) {
	out, changed, err := WrapIDs(body, c.p.signer, c.jobKey, c.versionOf)
	if err != nil {
		c.p.metrics.parseErrors.Increment(1)
		return body, false
	}
	if changed {
		if err := proxywasm.ReplaceHttpResponseBody(out); err != nil {
			c.fail("replace response body", err)
			return body, false
		}
	}
	return out, true
}

// versionOf is the weight version to sign into the wrapped id of a job
// an answer names: the call's own job's (or, for a create, every new
// id's); "" for other jobs (a list's), whose version the filter does not
// know.
func (c *httpContext) versionOf(id string) string {
	if v, ok := c.listVersions[id]; ok {
		return v
	}
	if c.refID == "" && !c.list || c.refID == id {
		return c.version
	}
	return ""
}

// releaseAnswered takes a pick's cost off its worker as the answer starts
// (the GPU is done with it). Only an answer from the picked worker says
// anything about it (a retry's comes from another): a success teaches its
// speed, a 5xx (its own, or Envoy's for a reset or timeout) counts as a
// failure, anything else ends a run of failures. A video job the worker
// took is the exception: its GPU work starts now, so its cost stays until
// the answer names the job (holdJob), or at the latest the stream's end.
// When a retry took the job to another worker, the cost moves there.
func (c *httpContext) releaseAnswered(status string) {
	code, by := c.answer(status)
	if c.task == TaskVideo && code >= 200 && code < 300 && by != "" {
		// Not a service time: the create call's time says nothing of the
		// GPU's speed.
		c.p.picker.move(c.sent, by)
		c.jobCreated = true
		c.p.picker.accepted(c.task, c.sent)
		return
	}
	c.p.picker.release(c.task, c.sent, outcomeOf(code, by == c.sent.addr), nowMicro())
}

// answer reads the answer's status code (0 if unreadable) and the worker
// that gave it ("" if Envoy does not say).
func (c *httpContext) answer(status string) (int, string) {
	code, err := strconv.Atoi(status)
	if err != nil {
		code = 0
	}
	addr, err := proxywasm.GetProperty([]string{"upstream", "address"})
	if err != nil {
		return code, ""
	}
	return code, string(addr)
}

// outcomeOf classifies an answer for the picked worker's record; picked
// says whether the picked worker gave it.
func outcomeOf(code int, picked bool) outcome {
	switch {
	case code == 0 || !picked:
		return outcomeOther
	case code == 502 || code == 503 || code == 504:
		return outcomeGatewayFailed
	case code >= 500:
		return outcomeFailed
	case code < 300:
		return outcomeServed
	}
	return outcomeAnswered
}

// trackJob reads a video job object in an answer (the worker's own ids):
// a create's job keeps its cost on the worker while it runs; a poll that
// shows a job ended stops counting it.
func (c *httpContext) trackJob(body []byte) {
	if c.p.picker == nil || !(c.jobCreated || c.job != "" && c.method == "GET") {
		return
	}
	j, ok := jobState(body)
	switch {
	case !ok:
	case c.jobCreated && !jobEnded(j.Status):
		c.p.picker.holdJob(c.sent, j.ID, nowMicro())
	case c.job == j.ID && jobEnded(j.Status):
		gpuMS := 0.0
		if j.Status == "completed" {
			gpuMS = j.InferenceTime * 1000
		}
		c.p.picker.endJob(j.ID, true, gpuMS)
	}
}
