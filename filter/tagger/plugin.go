// Package tagger is the router's proxy-wasm plugin. Inside Envoy, before
// routing, it classifies each request (x-diffusion-task), reads the model and
// estimates the GPU cost of small JSON generation bodies (x-diffusion-model,
// x-diffusion-cost), makes the job ids clients see carry the worker that
// holds the job, and measures the time a request spends in the router. It
// fails open: what it cannot parse passes through untouched and is counted.
package tagger

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/diffrouter/diffusion-router/jobid"
	"github.com/diffrouter/diffusion-router/wire"
)

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
	// running holds this VM's picked requests awaiting their answers,
	// watched for overdue and stalled ones (overdue.go).
	running map[uint32]running
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
	p.receiving, p.running = map[uint32]int64{}, map[uint32]running{}
	tick := int64(0)
	if cfg.RequestIdleMs > 0 {
		// A stalled body is cut within a quarter of the limit past it.
		tick = min(max(cfg.RequestIdleMs/4, 10), 1000)
	}
	if cfg.Pick {
		policy, err := newPolicy(cfg.PickPolicy())
		if err != nil {
			proxywasm.LogCriticalf("diffusion-tagger: %v", err)
			return types.OnPluginStartStatusFailed
		}
		p.picker = newPicker(cfg.SyncCluster, []byte(cfg.Secret))
		p.picker.policy = policy
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
		p.checkRunning(nowMicro())
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
	// forwarded: the control plane sent this request (wire.HeaderForward);
	// forwardTo is the worker the queue granted its held job.
	forwarded bool
	forwardTo string
	// pinVersion, minVersion and group are the request's weight-version
	// rules (versions.go).
	pinVersion, minVersion, group string
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
