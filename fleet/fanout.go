package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"time"
)

// CallResult is one worker's answer to a fleet-wide call, in the shape the
// Python routers return.
type CallResult struct {
	WorkerURL  string `json:"worker_url"`
	StatusCode int    `json:"status_code"`
	Body       any    `json:"body"`
}

// OK reports a 2xx answer whose body does not say {"success": false}.
func (c CallResult) OK() bool {
	if c.StatusCode < 200 || c.StatusCode > 299 {
		return false
	}
	if m, ok := c.Body.(map[string]any); ok {
		if s, ok := m["success"].(bool); ok && !s {
			return false
		}
	}
	return true
}

func (m *Manager) call(ctx context.Context, base, path string, body []byte, contentType string, timeout time.Duration) CallResult {
	res := CallResult{WorkerURL: base, StatusCode: http.StatusBadGateway}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewReader(body))
	if err != nil {
		res.Body = map[string]any{"error": err.Error()}
		return res
	}
	if contentType == "" {
		contentType = "application/json"
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := m.client.Do(req)
	if err != nil {
		res.Body = map[string]any{"error": "worker request failed: " + err.Error()}
		return res
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		res.Body = map[string]any{"error": "reading worker answer: " + err.Error()}
		return res
	}
	res.StatusCode = resp.StatusCode
	var decoded any
	if err := json.Unmarshal(raw, &decoded); err != nil {
		decoded = map[string]any{"raw": string(raw)}
	}
	res.Body = decoded
	return res
}
