package tagger

import (
	"encoding/json"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"

	"github.com/diffrouter/diffusion-router/wire"
)

// The job book (package jobbook, on the control plane): a job list is
// answered by the worker with its own ids, and a list entry must hand out
// the same signed id, version included, that the job's create did. The
// filter records each new video job's id before its create answer goes on,
// and looks a list's versions up before signing it. A book that does not
// answer costs the list its versions, never the answer.

// bookTimeoutMs bounds a book call: the answer waits for it.
const bookTimeoutMs = 2000

// recordJob records the created job named in out (the answer as the
// client gets it) and holds the answer until the book has it. It reports
// whether the answer is held.
func (c *httpContext) recordJob(out []byte) bool {
	cluster := c.p.cfg.JobsCluster
	j, ok := jobState(out)
	if cluster == "" || !ok || c.version == "" {
		return false
	}
	body, err := json.Marshal(wire.JobRecord{IDs: []string{j.ID}})
	if err != nil {
		return false
	}
	return c.callBook(cluster, wire.PathJobRecord, body, func([]byte) {})
}

// lookUpVersions asks the book for the versions of a list's jobs; the
// answer is signed and passed on when it replies. It reports whether the
// answer is held.
func (c *httpContext) lookUpVersions(body []byte) bool {
	cluster := c.p.cfg.JobsCluster
	if cluster == "" {
		return false
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if json.Unmarshal(body, &list) != nil || len(list.Data) == 0 {
		return false
	}
	q := wire.JobVersionsQuery{Worker: c.jobKey}
	for _, d := range list.Data {
		if d.ID != "" && len(q.IDs) < wire.MaxJobsPerCall {
			q.IDs = append(q.IDs, d.ID)
		}
	}
	qb, err := json.Marshal(q)
	if err != nil || len(q.IDs) == 0 {
		return false
	}
	return c.callBook(cluster, wire.PathJobVersions, qb, func(answer []byte) {
		var v wire.JobVersions
		if json.Unmarshal(answer, &v) == nil {
			c.listVersions = v.Versions
		}
		c.signAnswer(body)
	})
}

// callBook posts body to the book and, when it answers (whatever it
// answers, or not at all), runs then with a 200 answer's body (nil
// otherwise) and lets the held answer go on. It reports whether the call
// was sent.
func (c *httpContext) callBook(cluster, path string, body []byte, then func([]byte)) bool {
	headers := [][2]string{{":method", "POST"}, {":path", path}, {":authority", cluster}, {"content-type", "application/json"}}
	_, err := proxywasm.DispatchHttpCall(cluster, headers, body, nil, bookTimeoutMs, func(_, size, _ int) {
		var answer []byte
		if status, _ := proxywasm.GetHttpCallResponseHeaders(); httpStatus(status) == "200" {
			answer, _ = proxywasm.GetHttpCallResponseBody(0, size)
		} else {
			c.p.metrics.bookErrors.Increment(1)
		}
		then(answer)
		_ = proxywasm.ResumeHttpResponse()
	})
	if err != nil {
		c.p.metrics.bookErrors.Increment(1)
		proxywasm.LogWarnf("diffusion-tagger: job book %s: %v", path, err)
		return false
	}
	return true
}

func httpStatus(headers [][2]string) string { return headerValue(headers, ":status") }
