// Package tagger is the router's proxy-wasm plugin. Inside Envoy, before
// routing, it classifies each request (x-diffusion-task), reads the model and
// estimates the GPU cost of small JSON generation bodies (x-diffusion-model,
// x-diffusion-cost), makes the job ids clients see carry the worker that
// holds the job, and measures the time a request spends in the router. It
// fails open: what it cannot parse passes through untouched and is counted.
package tagger

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/diffrouter/diffusion-router/jobid"
	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/wire"
)

// ParseConfig reads and checks the plugin configuration; getenv reads the
// VM's environment.
func ParseConfig(b []byte, getenv func(string) string) (wire.FilterConfig, error) {
	c := wire.DefaultFilterConfig()
	c.FallbackRoute = ""
	if len(bytes.TrimSpace(b)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			return c, fmt.Errorf("plugin configuration: %w", err)
		}
	}
	if c.Secret == "" && c.SecretEnv != "" {
		c.Secret = strings.TrimSpace(getenv(c.SecretEnv))
		if len(c.Secret) < wire.MinSecret {
			return c, fmt.Errorf("plugin configuration: the environment variable %s (secret_env) must hold at least %d characters; Envoy passes it from its own environment", c.SecretEnv, wire.MinSecret)
		}
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("plugin configuration: %w", err)
	}
	return c, nil
}

// NewVMContext is the plugin's entry point.
func NewVMContext() types.VMContext { return &vmContext{} }

type vmContext struct{ types.DefaultVMContext }

func (*vmContext) NewPluginContext(uint32) types.PluginContext { return &pluginContext{} }

type pluginContext struct {
	types.DefaultPluginContext
	cfg     wire.FilterConfig
	signer  jobid.Signer
	metrics *metrics
	// fallbackNames counts the model names this VM looked up for logging.
	fallbackNames int
	// picker is set with least-work routing (cfg.Pick).
	picker *picker
	// receiving holds this VM's streams whose request body is still
	// arriving, with when it last moved (µs), for cfg.RequestIdleMs.
	receiving map[uint32]int64
}

const maxLoggedFallbacks = 256

func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	raw, err := proxywasm.GetPluginConfiguration()
	if err != nil && err != types.ErrorStatusNotFound {
		proxywasm.LogCriticalf("diffusion-tagger: reading configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	cfg, err := ParseConfig(raw, os.Getenv)
	if err != nil {
		proxywasm.LogCriticalf("diffusion-tagger: %v", err)
		return types.OnPluginStartStatusFailed
	}
	p.cfg, p.signer, p.metrics = cfg, jobid.NewSigner([]byte(cfg.Secret)), newMetrics()
	p.receiving = map[uint32]int64{}
	tick := int64(0)
	if cfg.RequestIdleMs > 0 {
		// A stalled body is cut within a quarter of the limit past it.
		tick = min(max(cfg.RequestIdleMs/4, 10), 1000)
	}
	if cfg.Pick {
		p.picker = newPicker(cfg.SyncCluster, []byte(cfg.Secret))
		p.picker.roundRobin = cfg.PickPolicy == wire.PickRoundRobin
		tick = wire.SyncInterval.Milliseconds()
	}
	if tick > 0 {
		if err := proxywasm.SetTickPeriodMilliSeconds(uint32(tick)); err != nil {
			proxywasm.LogCriticalf("diffusion-tagger: set tick period: %v", err)
			return types.OnPluginStartStatusFailed
		}
	}
	return types.OnPluginStartStatusOK
}

// OnTick syncs least-work routing's view with the control plane and cuts
// requests whose bodies stalled.
func (p *pluginContext) OnTick() {
	if p.picker != nil {
		p.picker.sync()
	}
	p.cutStalled(nowMicro())
}

// cutStalled answers 408 to each of this VM's requests whose body has not
// moved for cfg.RequestIdleMs. Envoy's own idle timers cannot tell a client
// that stopped sending from a generation that takes minutes (both are
// silent); only here is it known which side is silent.
func (p *pluginContext) cutStalled(now int64) {
	limit := p.cfg.RequestIdleMs * 1000
	if limit <= 0 {
		return
	}
	for id, last := range p.receiving {
		if now-last < limit {
			continue
		}
		delete(p.receiving, id)
		if err := proxywasm.SetEffectiveContext(id); err != nil {
			continue // the stream is gone
		}
		p.metrics.stalledCut.Increment(1)
		_ = proxywasm.SendHttpResponse(408, textHeaders, []byte(fmt.Sprintf("request body stalled: nothing arrived for %d ms (--request-idle-timeout)", p.cfg.RequestIdleMs)), -1)
	}
}

func (p *pluginContext) NewHttpContext(id uint32) types.HttpContext {
	return &httpContext{p: p, id: id, start: time.Now()}
}

type httpContext struct {
	types.DefaultHttpContext
	p     *pluginContext
	id    uint32
	start time.Time
	task  Task

	readBody bool
	// rewrite: the response carries job ids to wrap; jobKey is the worker
	// the request was pinned to (polls), empty for creations.
	rewrite bool
	jobKey  string
	// model is the model the body named (x-diffusion-model), if any.
	model string

	// pickPending: least-work routing picks this request's worker once
	// its cost is known; sent is the pick, counted on the worker.
	pickPending bool
	sent        *sent
	// The router-owned queue: the request's priority and tenant, and while
	// it waits for its turn (waiting) its ticket and cost.
	priority    int
	tenant      string
	ticket      string
	waiting     bool
	queuedCost  int64
	queuedKnown bool
	queuedAt    int64 // µs
	// jobCreated: a picked video create the worker took; its cost stays
	// counted as a job once the answer names it. job is the worker's id
	// of the job a call goes to (its object: poll or delete), and
	// method that call's.
	jobCreated bool
	job        string
	method     string
	// version is the weight version that made the job a call is about:
	// from its id for a pinned call (refID the job's own id), from the
	// create's answer for a new one. It labels the answer and is signed
	// into the ids the answer hands out.
	version string
	refID   string
	// list: the answer is a job list, whose entries' versions the job
	// book knows (listVersions, once looked up).
	list         bool
	listVersions map[string]string
}

// fail handles an error of the plugin itself: counted, logged, and the
// request passes (or, fail-closed, gets a 500).
func (c *httpContext) fail(where string, err error) types.Action {
	c.p.metrics.filterErrors.Increment(1)
	proxywasm.LogWarnf("diffusion-tagger: %s: %v", where, err)
	if c.p.cfg.FailClosed {
		_ = proxywasm.SendHttpResponse(500, textHeaders, []byte("router filter error: "+where), -1)
		return types.ActionPause
	}
	return types.ActionContinue
}

// The filter's own replies are plain text: Envoy's local-reply config (set
// by the control plane) turns every local reply into {"error": ...}.
var textHeaders = [][2]string{{"content-type", "text/plain"}}

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
	for _, h := range []string{wire.HeaderTask, wire.HeaderModel, wire.HeaderCost, wire.HeaderTarget, wire.HeaderPick, wire.HeaderPickRetry, wire.HeaderQueueMs} {
		_ = proxywasm.RemoveHttpRequestHeader(h)
	}
	c.task, c.method = Classify(method, path), method
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
	// A job list that names a job (?video_id=, or the ?after= cursor) is
	// that job's worker's list.
	if base, query, _ := strings.Cut(path, "?"); base == "/v1/videos" && method == "GET" && query != "" {
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
	if !endOfStream && c.task.ParsesBody() && c.smallJSONBody() {
		c.readBody = true
		return types.ActionPause // hold the headers until the body told us the model
	}
	if c.pickWorker(0, false) {
		return types.ActionPause // waits for its turn in the router's queue
	}
	return types.ActionContinue
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
	if c.p.cfg.Queue {
		c.tagQueue()
	}
	choice, cost, st := c.p.picker.choose(c.task, c.model, cost, known, queue)
	if st == pickFull {
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

// pinToWorker checks a wrapped job id, restores the worker's own id in the
// path and names the worker for the load balancer. An id the router did not
// issue is answered 404 here: it never reaches a worker.
func (c *httpContext) pinToWorker(path, prefix, wrapped, suffix string) types.Action {
	ref, ok := c.p.signer.UnwrapRef(wrapped)
	if !ok {
		return c.refuseJobID(wrapped)
	}
	id, key := ref.ID, ref.Worker
	c.refID, c.version = ref.ID, ref.Version
	query := ""
	if i := strings.IndexByte(path, '?'); i >= 0 {
		query = path[i:]
	}
	if err := proxywasm.ReplaceHttpRequestHeader(":path", prefix+id+suffix+query); err != nil {
		return c.fail("rewrite :path", err)
	}
	if err := proxywasm.ReplaceHttpRequestHeader(wire.HeaderTarget, key); err != nil {
		return c.fail("set "+wire.HeaderTarget, err)
	}
	c.jobKey = key
	if prefix == wire.PathVideos+"/" && suffix == "" {
		c.job = id
	}
	// A job object (or a new job of the same worker) comes back as JSON;
	// content is not JSON and passes untouched.
	c.rewrite = true
	return types.ActionContinue
}

// refuseJobID answers 404 for an id the router did not issue: it never
// reaches a worker.
func (c *httpContext) refuseJobID(wrapped string) types.Action {
	c.p.metrics.unknownJobIDs.Increment(1)
	_ = proxywasm.SendHttpResponse(404, textHeaders, []byte("unknown job id "+strconv.Quote(wrapped)+": it was not issued by this router"), -1)
	return types.ActionPause
}

// pinListQuery unwraps the job ids a list query names (video_id, after)
// and pins the request to their worker. It reports false when the query
// names no job.
func (c *httpContext) pinListQuery(base, query string) (types.Action, bool) {
	values, err := url.ParseQuery(query)
	if err != nil {
		return types.ActionContinue, false
	}
	key := ""
	for _, name := range []string{"video_id", "after"} {
		wrapped := values.Get(name)
		if wrapped == "" {
			continue
		}
		ref, ok := c.p.signer.UnwrapRef(wrapped)
		if !ok || (key != "" && ref.Worker != key) {
			return c.refuseJobID(wrapped), true
		}
		key = ref.Worker
		values.Set(name, ref.ID)
		if name == "video_id" {
			// A list of one job: its entry is about that job.
			c.refID, c.version = ref.ID, ref.Version
		}
	}
	if key == "" {
		return types.ActionContinue, false
	}
	if err := proxywasm.ReplaceHttpRequestHeader(":path", base+"?"+values.Encode()); err != nil {
		return c.fail("rewrite :path", err), true
	}
	if err := proxywasm.ReplaceHttpRequestHeader(wire.HeaderTarget, key); err != nil {
		return c.fail("set "+wire.HeaderTarget, err), true
	}
	c.jobKey, c.rewrite, c.list = key, true, true
	return types.ActionContinue, true
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
	if c.tenant == "" && wire.ValidTenant(facts.User) {
		// OpenAI's "user" names the tenant; one that cannot name a tenant
		// (a space, too long) leaves the default.
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

func (c *httpContext) OnHttpResponseHeaders(_ int, endOfStream bool) types.Action {
	status, _ := proxywasm.GetHttpResponseHeader(":status")
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
	if c.version != "" {
		// The job was made by the weights its id names, whatever its
		// worker holds now.
		_ = proxywasm.ReplaceHttpResponseHeader(wire.HeaderWeightVersion, c.version)
	}

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

// noteFallback counts a request whose model no worker lists (it went to a
// worker of its task type) and logs each such name once per Envoy: the
// first VM to claim the name in shared data logs it.
func (c *httpContext) noteFallback() {
	route, err := proxywasm.GetProperty([]string{"xds", "route_name"})
	if err != nil || string(route) != c.p.cfg.FallbackRoute {
		return
	}
	c.p.metrics.modelFallbacks.Increment(1)
	// Names are the clients' to choose: shared data holds a bounded number.
	if c.p.fallbackNames >= maxLoggedFallbacks {
		return
	}
	c.p.fallbackNames++
	key := "diffusion-router.model-fallback." + c.model
	if _, _, err := proxywasm.GetSharedData(key); err == nil {
		return
	}
	if err := proxywasm.SetSharedData(key, []byte{1}, 0); err == nil {
		proxywasm.LogWarnf("diffusion-tagger: no worker lists model %q; such requests go to any worker of their task type (sglang ignores the name); --strict-model-routing answers 404 instead", c.model)
	}
}

func newRequestID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return strconv.FormatInt(time.Now().UnixNano(), 16)
	}
	return hex.EncodeToString(b[:])
}
