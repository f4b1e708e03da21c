package tagger

import (
	"math"
	"strconv"
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/wire"
)

func (c *httpContext) OnHttpRequestHeaders(_ int, endOfStream bool) types.Action {
	method, err := proxywasm.GetHttpRequestHeader(":method")
	if err != nil {
		return c.fail("read :method", err)
	}
	path, err := proxywasm.GetHttpRequestHeader(":path")
	if err != nil {
		return c.fail("read :path", err)
	}
	// Tags are the router's word, never the client's.
	for _, h := range []string{wire.HeaderTask, wire.HeaderModel, wire.HeaderCost, wire.HeaderTarget, wire.HeaderPick, wire.HeaderPickRetry, wire.HeaderQueueMs, wire.HeaderHeld, wire.HeaderHeldAsk} {
		_ = proxywasm.RemoveHttpRequestHeader(h)
	}
	c.task, c.method = Classify(method, path), method
	if c.readForward() {
		return types.ActionPause // refused: a forward token that does not check out
	}
	if !endOfStream && c.p.cfg.RequestIdleMs > 0 {
		c.p.receiving[c.id] = nowMicro()
	}
	c.p.metrics.requests[c.task].Increment(1)
	if err := proxywasm.ReplaceHttpRequestHeader(wire.HeaderTask, string(c.task)); err != nil {
		return c.fail("set "+wire.HeaderTask, err)
	}
	if id, _ := proxywasm.GetHttpRequestHeader(wire.HeaderRequestID); id == "" {
		_ = proxywasm.ReplaceHttpRequestHeader(wire.HeaderRequestID, newRequestID())
	}

	// Every path under a job prefix goes to the job's worker or nowhere:
	// one check, whatever the method or the rest of the path.
	if prefix, wrapped, suffix, ok := jobPath(path); ok {
		return c.pinToWorker(path, prefix, wrapped, suffix)
	}
	base, query, _ := strings.Cut(path, "?")
	if base == wire.PathVideos && method == "GET" && c.p.cfg.HoldJobs && !c.forwarded {
		// A job list shows the jobs the router holds too: the control
		// plane merges them into a worker's list (which it asks for
		// through this filter, forwarded).
		c.toHeld("list")
		return types.ActionContinue
	}
	// A job list that names a job (?video_id=, or the ?after= cursor) is
	// that job's worker's list.
	if base == wire.PathVideos && method == "GET" && query != "" {
		if a, handled := c.pinListQuery(base, query); handled {
			return a
		}
	}
	switch {
	case method == "POST" && (c.task == TaskVideo || c.task == TaskImage || c.task == TaskImageEdit):
		c.rewrite = true // the answer carries ids to wrap
	case method == "GET" && c.task == TaskVideoPoll:
		c.rewrite, c.list = true, true // a list of jobs
	}
	c.pickPending = c.p.picker != nil && picks(method, c.task)
	if c.pickPending && c.p.cfg.Queue && c.queueHeaders() {
		return types.ActionPause // refused: bad priority or tenant
	}
	if picks(method, c.task) && !c.forwarded && c.versionHeaders() {
		return types.ActionPause // refused: a bad version rule, or one no queue applies
	}
	if !endOfStream && c.task.ParsesBody() && c.smallJSONBody() {
		c.readBody = true
		return types.ActionPause // hold the headers until the body told us the model
	}
	// A body the filter does not read (multipart, large) is held by Envoy
	// while the request waits for its turn, so only one that fits a hold
	// may wait; a larger one is picked at once. So is a video create whose
	// body is not read (the openai SDK's, multipart): waiting, its create
	// call would not answer until a slot frees, past the SDK's timeout for
	// long jobs (whose retry creates the job again); without held jobs
	// (--hold-video-jobs=false, or external Envoys not told where to send
	// them) it goes at once, as without the queue. With held jobs the body
	// is not held here at all: the control plane takes the create and
	// answers it at once.
	unreadVideo := c.task == TaskVideo && !endOfStream && !c.p.cfg.HoldJobs
	if c.pick(0, false, c.p.cfg.Queue && (endOfStream || c.bodyFitsHold() || c.holdsJob()) && !unreadVideo) {
		return types.ActionPause // waits for its turn in the router's queue
	}
	return types.ActionContinue
}

// bodyFitsHold reports whether the request announces a body small enough
// for Envoy to hold while the request waits in the router's queue.
func (c *httpContext) bodyFitsHold() bool {
	cl, err := proxywasm.GetHttpRequestHeader("content-length")
	if err != nil || cl == "" {
		return false // streamed: its size is unknown
	}
	n, err := strconv.Atoi(cl)
	return err == nil && n >= 0 && n <= wire.MaxHeldBytes
}

// pickWorker picks the request's worker (least-work routing) before its
// headers go on to the router; cost is the estimate when known. Without a
// pick, Envoy's own policy routes the request. With the router-owned
// queue, a request that finds no free slot asks for its turn instead: it
// reports whether the request now waits (the caller pauses it).
func (c *httpContext) pickWorker(cost int64, known bool) (waits bool) {
	return c.pick(cost, known, c.p.cfg.Queue)
}

// pick is pickWorker; queue: the request may wait for its turn (not when
// its body streams on: a paused stream would have to hold it all).
func (c *httpContext) pick(cost int64, known, queue bool) (waits bool) {
	if !c.pickPending {
		return false
	}
	c.pickPending = false
	if c.forwardTo != "" {
		c.bindForwarded(cost, known)
		return false
	}
	if c.p.cfg.Queue {
		c.tagQueue()
	}
	if c.versioned() {
		return c.queueVersioned(cost, known)
	}
	choice, cost, st := c.p.picker.choose(c.task, c.model, cost, known, queue)
	if st == pickFull {
		if c.holdsJob() {
			c.hold(cost)
			return false
		}
		if c.enqueue(cost, known) {
			return true
		}
		choice, cost, st = c.p.picker.choose(c.task, c.model, cost, known, false)
	}
	if st != pickMade {
		c.p.picker.unpicked.Increment(1)
		return false
	}
	c.bind(choice, cost, known, false)
	return false
}

// bind sends the request to the chosen worker; count: its cost is not
// counted there yet (a grant from the queue).
func (c *httpContext) bind(choice leastwork.Choice, cost int64, known, count bool) {
	if count {
		if err := c.p.picker.count(choice.First, cost, math.MaxInt64); err != nil {
			// A worker this Envoy has no record of yet: sent there all
			// the same, uncounted here (its own word still counts it).
			proxywasm.LogWarnf("diffusion-tagger: count the queue's grant on %s: %v", choice.First, err)
			if err := setPickHeaders(choice); err != nil {
				c.p.picker.unpicked.Increment(1)
			}
			return
		}
	}
	c.sent = &sent{addr: choice.First, cost: cost, costKnown: known, at: nowMicro()}
	if err := setPickHeaders(choice); err != nil {
		c.p.picker.release(c.task, c.sent, outcomeOther, nowMicro())
		if c.sent.released {
			c.sent = nil // else the stream's end releases it
		}
		c.p.picker.unpicked.Increment(1)
		return
	}
	c.p.picker.picks.Increment(1)
	c.watch(choice.Expected)
}

// OnHttpRequestTrailers ends a request body that had trailers.
func (c *httpContext) OnHttpRequestTrailers(int) types.Action {
	delete(c.p.receiving, c.id)
	return types.ActionContinue
}

// OnHttpStreamDone ends every stream, however it ended (answer, reset,
// timeout, client gone): a pick's cost leaves its worker here at the
// latest, so outstanding work never drifts.
func (c *httpContext) OnHttpStreamDone() {
	delete(c.p.receiving, c.id)
	delete(c.p.running, c.id)
	c.leaveQueue()
	if c.sent != nil {
		c.p.picker.release(c.task, c.sent, outcomeOther, nowMicro())
	}
}

// smallJSONBody reports whether the request body is JSON and announced as
// small enough to read. A body without a length is read up to the limit.
func (c *httpContext) smallJSONBody() bool {
	ct, _ := proxywasm.GetHttpRequestHeader("content-type")
	if !strings.Contains(strings.ToLower(ct), "json") {
		return false
	}
	if cl, err := proxywasm.GetHttpRequestHeader("content-length"); err == nil && cl != "" {
		n, err := strconv.Atoi(cl)
		if err != nil || n > c.p.cfg.MaxBodyBytes {
			c.p.metrics.bodiesSkipped.Increment(1)
			return false
		}
	}
	return true
}

// holdBody holds a body the plugin wants (*want) until it is complete and
// returns it (ready). A body that outgrows the limit (no content-length to
// tell before) streams on untouched and counts as skipped.
func (c *httpContext) holdBody(want *bool, size, limit int, end bool, get func(int, int) ([]byte, error), what string) ([]byte, types.Action, bool) {
	if !*want {
		return nil, types.ActionContinue, false
	}
	if size > limit {
		*want = false
		c.p.metrics.bodiesSkipped.Increment(1)
		return nil, types.ActionContinue, false
	}
	if !end {
		return nil, types.ActionPause, false
	}
	*want = false
	body, err := get(0, size)
	if err != nil {
		return nil, c.fail(what, err), false
	}
	return body, types.ActionContinue, true
}

func (c *httpContext) OnHttpRequestBody(bodySize int, endOfStream bool) (action types.Action) {
	if _, ok := c.p.receiving[c.id]; ok {
		if endOfStream {
			delete(c.p.receiving, c.id)
		} else {
			c.p.receiving[c.id] = nowMicro()
		}
	}
	if c.waiting {
		// Paused at its headers for its turn: its body waits with it
		// (Envoy holds it; bodyFitsHold let only a small one wait).
		return types.ActionPause
	}
	body, action, ready := c.holdBody(&c.readBody, bodySize, c.p.cfg.MaxBodyBytes, endOfStream, proxywasm.GetHttpRequestBody, "read request body")
	if !ready {
		if !c.readBody {
			// Not read after all (too large): picked at the task's
			// average, at once (it streams on).
			c.pick(0, false, false)
		}
		return action
	}
	// However the body turns out, the worker is picked before the headers
	// go on (a refusal below sends none), or the request waits for its
	// turn.
	defer func() {
		if c.pickWorker(0, false) && action == types.ActionContinue {
			action = types.ActionPause
		}
	}()
	facts, err := ParseBody(c.task, body, c.p.cfg.Defaults)
	if err != nil {
		c.p.metrics.parseErrors.Increment(1)
		return types.ActionContinue // the worker will say what is wrong
	}
	if facts.Model != "" && !validHeaderValue(facts.Model) {
		// A name with control characters cannot be matched or passed on
		// safely: refuse it rather than route as if it were absent.
		c.p.metrics.parseErrors.Increment(1)
		c.pickPending = false // answered here: no worker
		_ = proxywasm.SendHttpResponse(400, textHeaders, []byte("the request's \"model\" has control characters or is over 512 bytes"), -1)
		return types.ActionPause
	}
	if facts.Model != "" {
		if err := proxywasm.ReplaceHttpRequestHeader(wire.HeaderModel, facts.Model); err != nil {
			return c.fail("set "+wire.HeaderModel, err)
		}
		c.model = facts.Model
	}
	if err := proxywasm.ReplaceHttpRequestHeader(wire.HeaderCost, strconv.FormatInt(facts.Cost, 10)); err != nil {
		return c.fail("set "+wire.HeaderCost, err)
	}
	c.p.metrics.cost.Record(uint64(facts.Cost))
	if c.tenant == "" && c.p.cfg.TrustBodyUser && wire.ValidTenant(facts.User) {
		// OpenAI's "user" names the tenant when the operator trusts it;
		// one that cannot name a tenant (a space, too long) leaves the
		// default.
		c.tenant = facts.User
	}
	if facts.ResponseFormat == "b64_json" {
		// Base64 images carry no id a client could come back with: the
		// answer (megabytes) streams through untouched.
		c.rewrite = false
	}
	if c.pickWorker(facts.Cost, true) {
		return types.ActionPause // waits for its turn in the router's queue
	}
	return types.ActionContinue
}

func validHeaderValue(s string) bool {
	if len(s) > 512 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return false
		}
	}
	return true
}
