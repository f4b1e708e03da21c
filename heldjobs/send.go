package heldjobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

// dropped are the headers a held create does not keep: hop-by-hop ones,
// what Envoy adds on the way in, and the router's own tags (its filter
// sets them again when the job is sent). Priority and tenant stay: the
// filter set them to what the queue applied.
var dropped = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Content-Length": true, "Host": true, "Expect": true, "Proxy-Connection": true,
}

// keptHeaders are the create's headers as they are sent with the job.
func keptHeaders(h http.Header) map[string][]string {
	out := map[string][]string{}
	for k, v := range h {
		lk := strings.ToLower(k)
		switch {
		case dropped[http.CanonicalHeaderKey(k)]:
		case strings.HasPrefix(lk, "x-envoy-"), strings.HasPrefix(lk, "x-forwarded-"):
		case strings.HasPrefix(lk, "x-diffusion-") && lk != wire.HeaderPriority && lk != wire.HeaderTenant:
		default:
			out[k] = append([]string(nil), v...)
		}
	}
	return out
}

// sendOutcome is how a send ended: sent (the worker's id as signed, the
// worker and the Envoy that sent it), refused by the worker (4xx: the
// job can never run), or to retry (no worker took it; maybe: one may
// have, the answer was lost).
type sendOutcome struct {
	sent                 bool
	wrapped, worker      string
	node, refused, retry string
	maybe                bool
}

// sendTimeout bounds a create's send (a worker answers a create at once);
// a send under way when the router stops is let finish within it, so its
// outcome is recorded.
const sendTimeout = 30 * time.Second

// maxAnswerBytes bounds a create's answer read (a job object).
const maxAnswerBytes = wire.MaxHeldBytes

// send sends a job's create through the Envoy, granted worker.
func (h *Holder) send(ctx context.Context, j *Job, worker string) sendOutcome {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sendTimeout)
	defer cancel()
	f, err := os.Open(h.st.bodyPath(j.ID))
	if err != nil {
		return sendOutcome{refused: "its stored body is gone: " + err.Error()}
	}
	defer f.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.o.Envoy+j.Path, f)
	if err != nil {
		return sendOutcome{refused: err.Error()}
	}
	req.ContentLength = j.Bytes
	for k, v := range j.Header {
		req.Header[k] = v
	}
	now := h.o.Now()
	req.Header.Set(wire.HeaderForward, wire.ForwardToken(h.o.Secret, now.UnixMilli(), wire.Forward{Worker: worker, WaitedMs: max(now.Sub(j.Created).Milliseconds(), 0)}))
	resp, err := h.o.Client.Do(req)
	if err != nil {
		// Refused: nothing was sent. Anything else may have reached
		// the worker.
		return sendOutcome{retry: err.Error(), maybe: !errors.Is(err, syscall.ECONNREFUSED)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if err != nil {
		return sendOutcome{retry: "reading the answer: " + err.Error(), maybe: resp.StatusCode < 300}
	}
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		var o struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(body, &o) != nil || o.ID == "" {
			return sendOutcome{refused: fmt.Sprintf("the worker's answer (%d) names no job", code)}
		}
		by := resp.Header.Get(wire.HeaderWorker)
		if by == "" {
			by = worker
		}
		return sendOutcome{sent: true, wrapped: o.ID, worker: by, node: resp.Header.Get(wire.HeaderNode)}
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		return sendOutcome{retry: fmt.Sprintf("%d %s", code, errorText(body))}
	default:
		return sendOutcome{refused: fmt.Sprintf("%d %s", code, errorText(body))}
	}
}

// errorText is the "error" of a JSON answer (a string, or an object's
// message), or the answer itself.
func errorText(body []byte) string {
	var e struct {
		Error  json.RawMessage `json:"error"`
		Detail any             `json:"detail"`
	}
	if json.Unmarshal(body, &e) == nil {
		var s string
		if json.Unmarshal(e.Error, &s) == nil && s != "" {
			return s
		}
		var m struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(e.Error, &m) == nil && m.Message != "" {
			return m.Message
		}
		if e.Detail != nil {
			b, _ := json.Marshal(e.Detail)
			return string(b)
		}
	}
	return strings.TrimSpace(string(body))
}

// Forward sends a call about a sent job (or a job list: listing) through
// the Envoy; the caller closes the answer's body.
func (h *Holder) Forward(ctx context.Context, method, target string, header http.Header, body io.Reader, listing bool) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, h.o.Envoy+target, body)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		if !dropped[http.CanonicalHeaderKey(k)] && !strings.HasPrefix(strings.ToLower(k), "x-diffusion-") {
			req.Header[k] = v
		}
	}
	if listing {
		// Not handed back here: the list of a worker, merged by the caller.
		req.Header.Set(wire.HeaderForward, wire.ForwardToken(h.o.Secret, h.o.Now().UnixMilli(), wire.Forward{}))
	}
	return h.o.Client.Do(req)
}
