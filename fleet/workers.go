package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/diffrouter/diffusion-router/traces"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/diffrouter/diffusion-router/registry"
	"github.com/sirupsen/logrus"
)

// workerClient is every request the control plane itself sends a worker:
// health and capability probes, fleet-wide calls, job lists.
type workerClient struct {
	cfg    Config
	log    *logrus.Entry
	client *http.Client
	// resolve looks a worker hostname up; replaced in tests.
	resolve func(ctx context.Context, host string) ([]netip.Addr, error)
}

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

func (wc *workerClient) call(ctx context.Context, base, path string, body []byte, contentType string, timeout time.Duration) (res CallResult) {
	// A fleet-wide call's span has a child per worker, with its answer.
	ctx, span := wc.cfg.Tracer.Start(ctx, "worker POST "+path, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("diffusion.worker", base)))
	defer func() {
		span.SetAttributes(attribute.Int("http.status_code", res.StatusCode))
		if !res.OK() {
			traces.Fail(span, fmt.Sprintf("status %d", res.StatusCode))
		}
		span.End()
	}()
	res = CallResult{WorkerURL: base, StatusCode: http.StatusBadGateway}
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
	traces.Inject(ctx, req.Header)
	resp, err := wc.client.Do(req)
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

// resolveAddr gives the IP Envoy connects to. A hostname is resolved here,
// once, and every address it resolves to must pass the same checks as an IP
// literal: DNS must not turn into a way to reach a metadata service.
func (wc *workerClient) resolveAddr(ctx context.Context, u registry.WorkerURL) (string, error) {
	if a, err := netip.ParseAddr(u.Host); err == nil {
		return a.String(), nil
	}
	ctx, cancel := context.WithTimeout(ctx, wc.cfg.ProbeTimeout)
	defer cancel()
	addrs, err := wc.resolve(ctx, u.Host)
	if err != nil || len(addrs) == 0 {
		return "", fmt.Errorf("%w: %s does not resolve: %v", registry.ErrInvalidURL, u.Host, err)
	}
	for _, a := range addrs {
		if err := registry.CheckWorkerAddr(a); err != nil {
			return "", fmt.Errorf("%w: %s resolves to %s: %v", registry.ErrInvalidURL, u.Host, a, err)
		}
	}
	// Prefer IPv4, as most GPU hosts listen there.
	slices.SortStableFunc(addrs, func(a, b netip.Addr) int {
		switch {
		case a.Unmap().Is4() && !b.Unmap().Is4():
			return -1
		case !a.Unmap().Is4() && b.Unmap().Is4():
			return 1
		}
		return 0
	})
	return addrs[0].Unmap().String(), nil
}

// probeCapabilities reads /v1/models. A worker that does not answer is still
// admitted (it may be starting); its capabilities stay unknown until a later
// refresh succeeds.
func (wc *workerClient) probeCapabilities(ctx context.Context, u registry.WorkerURL) registry.Capabilities {
	ctx, cancel := context.WithTimeout(ctx, wc.cfg.ProbeTimeout)
	defer cancel()
	body, err := wc.get(ctx, u.String()+"/v1/models", 4<<20)
	if err != nil {
		wc.log.WithError(err).WithField("worker", u.String()).Debug("could not read capabilities")
		return registry.Capabilities{}
	}
	caps, err := ParseModels(body)
	if err != nil {
		wc.log.WithError(err).WithField("worker", u.String()).Warn("worker answered /v1/models with something unexpected")
		return registry.Capabilities{}
	}
	return caps
}

// ParseModels reads a /v1/models answer.
func ParseModels(body []byte) (registry.Capabilities, error) {
	var doc struct {
		Data []json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return registry.Capabilities{}, fmt.Errorf("decode /v1/models: %w", err)
	}
	caps := registry.Capabilities{Known: true}
	for _, raw := range doc.Data {
		var entry struct {
			ID       string `json:"id"`
			Root     string `json:"root"`
			TaskType string `json:"task_type"`
		}
		if err := json.Unmarshal(raw, &entry); err != nil {
			return registry.Capabilities{}, fmt.Errorf("decode /v1/models entry: %w", err)
		}
		// Requests may name the served name (id) or the model path (root,
		// what /v1/model_info reports): both route here.
		for _, name := range []string{entry.ID, entry.Root} {
			// A name that cannot be matched safely (control characters)
			// is not routed by.
			if registry.ValidName(name) && !slices.Contains(caps.ModelIDs, name) {
				caps.ModelIDs = append(caps.ModelIDs, name)
			}
		}
		if entry.TaskType != "" && !slices.Contains(caps.TaskTypes, entry.TaskType) {
			caps.TaskTypes = append(caps.TaskTypes, entry.TaskType)
		}
		caps.Models = append(caps.Models, raw)
	}
	return caps, nil
}

// CheckHealth asks the worker's /health once.
func (wc *workerClient) checkHealth(ctx context.Context, u registry.WorkerURL) error {
	ctx, cancel := context.WithTimeout(ctx, wc.cfg.ProbeTimeout)
	defer cancel()
	_, err := wc.get(ctx, u.String()+"/health", 64<<10)
	return err
}

func (wc *workerClient) get(ctx context.Context, url string, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	resp, err := wc.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: GET %s: %v", ErrUnreachable, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return nil, fmt.Errorf("%w: GET %s: %v", ErrUnreachable, url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: GET %s answered %d", ErrRejected, url, resp.StatusCode)
	}
	return body, nil
}

// callAll POSTs body to path on each worker in parallel; results are in the
// order of workers.
func (wc *workerClient) callAll(ctx context.Context, workers []registry.Worker, path string, body []byte, timeout time.Duration) []CallResult {
	results := make([]CallResult, len(workers))
	var wg sync.WaitGroup
	for i, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = wc.call(ctx, w.URL.String(), path, body, "application/json", timeout)
		}()
	}
	wg.Wait()
	return results
}
