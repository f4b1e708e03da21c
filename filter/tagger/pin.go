package tagger

import (
	"net/url"
	"strconv"
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/diffrouter/diffusion-router/wire"
)

// pinToWorker checks a wrapped job id, restores the worker's own id in the
// path and names the worker for the load balancer. An id the router did not
// issue is answered 404 here: it never reaches a worker.
func (c *httpContext) pinToWorker(path, prefix, wrapped, suffix string) types.Action {
	ref, ok := c.p.signer.UnwrapRef(wrapped)
	if !ok {
		return c.refuseJobID(wrapped)
	}
	if ref.Worker == wire.HeldWorker {
		// A job the router holds (or held): the control plane answers.
		c.toHeld("job")
		return types.ActionContinue
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
		if ok && ref.Worker == wire.HeldWorker {
			if c.forwarded {
				// The control plane never forwards a held id.
				return c.refuseJobID(wrapped), true
			}
			c.toHeld("list")
			return types.ActionContinue, true
		}
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
