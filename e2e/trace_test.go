package e2e

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"

	"github.com/diffrouter/diffusion-router/wire"
)

// otlpReceiver is an OTLP/gRPC trace collector on the official protos: it
// keeps every span it is sent.
type otlpReceiver struct {
	collectortrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []*tracev1.Span
	Addr  string
}

func (r *otlpReceiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			r.spans = append(r.spans, ss.GetSpans()...)
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// find returns the spans whose attributes hold every key=value of want.
func (r *otlpReceiver) find(want map[string]string) []*tracev1.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*tracev1.Span
	for _, s := range r.spans {
		if attrsHold(s, want) {
			out = append(out, s)
		}
	}
	return out
}

func attr(s *tracev1.Span, key string) (string, bool) {
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() == key {
			return kv.GetValue().GetStringValue(), true
		}
	}
	return "", false
}

func attrsHold(s *tracev1.Span, want map[string]string) bool {
	for k, v := range want {
		if got, ok := attr(s, k); !ok || (v != "*" && got != v) {
			return false
		}
	}
	return true
}

// spanTags lists each span's name and diffusion.* attributes (for a
// failure's message).
func spanTags(spans []*tracev1.Span) []string {
	var out []string
	for _, s := range spans {
		tags := s.GetName()
		for _, kv := range s.GetAttributes() {
			if strings.HasPrefix(kv.GetKey(), "diffusion.") || kv.GetKey() == "upstream_address" {
				tags += " " + kv.GetKey() + "=" + kv.GetValue().GetStringValue()
			}
		}
		out = append(out, tags)
	}
	return out
}

func startOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &otlpReceiver{Addr: l.Addr().String()}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, r)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return r
}

// TestEnvoySpansReachTheCollector: with --otlp-endpoint, each request is a
// span at the collector with the worker, task, model, cost, tenant,
// priority and (for a request that waited) the queue wait, and the worker
// got the same trace's W3C traceparent, so its own spans would join.
func TestEnvoySpansReachTheCollector(t *testing.T) {
	t.Parallel()
	rec := startOTLPReceiver(t)
	ws, urls := startFleet(t, 1, "--time-scale", "1", "--base", "300ms", "--per-step", "0", "--jitter", "0")
	r := startRouter(t, "--otlp-endpoint", rec.Addr, "--worker-urls", strings.Join(urls, ","))

	// Two at once on one worker: the second waits in the router's queue.
	var wg sync.WaitGroup
	results := make([]queueResult, 2)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = sendImageBody(context.Background(), r.Front, `{"prompt":"q","size":"256x256","model":"black-forest-labs/FLUX.1-dev"}`,
				map[string]string{wire.HeaderTenant: "trainer-7", wire.HeaderPriority: "3"})
		}()
	}
	wg.Wait()
	for _, res := range results {
		if res.err != nil || res.status != http.StatusOK {
			t.Fatalf("request: %d %v %s", res.status, res.err, res.body)
		}
	}
	addr := strings.TrimPrefix(ws[0].URL, "http://")
	want := map[string]string{"diffusion.worker": addr, "diffusion.task": "image", "diffusion.model": "black-forest-labs/FLUX.1-dev", "diffusion.cost": "*",
		"diffusion.tenant": "trainer-7", "diffusion.priority": "3"}
	var spans []*tracev1.Span
	deadline := time.Now().Add(30 * time.Second)
	for spans = rec.find(want); len(spans) < 2; spans = rec.find(want) {
		if time.Now().After(deadline) {
			t.Fatalf("after 30 s the collector holds %d spans with %v; all it holds: %v", len(spans), want, spanTags(rec.find(nil)))
		}
		time.Sleep(50 * time.Millisecond)
	}
	waited := 0
	for _, s := range spans {
		if ms, ok := attr(s, "diffusion.queue_wait_ms"); ok && ms != "" {
			waited++
		}
	}
	if waited < 1 {
		t.Fatalf("no span says it waited in the router's queue: %v", spans)
	}
	// The worker got each span's trace.
	var st struct {
		Traceparents []string `json:"traceparents"`
	}
	if err := json.Unmarshal(get(t, ws[0].URL+"/stats").Body, &st); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, tp := range st.Traceparents {
		if parts := strings.Split(tp, "-"); len(parts) == 4 {
			seen[parts[1]] = true
		}
	}
	for _, s := range spans {
		if id := hex.EncodeToString(s.GetTraceId()); !seen[id] {
			t.Fatalf("span of trace %s: the worker got traceparents %v, not this trace", id, st.Traceparents)
		}
	}
}

// TestControlPlaneSpans: a fleet-wide call through the front port is one
// trace: Envoy's span, the control plane's registry span, the fleet-wide
// call's span and one child per worker with its status; each worker got
// that trace's traceparent, and the call's log line names the trace.
func TestControlPlaneSpans(t *testing.T) {
	t.Parallel()
	rec := startOTLPReceiver(t)
	ws, urls := startFleet(t, 2, "--time-scale", "0.01")
	r := startRouter(t, "--otlp-endpoint", rec.Addr, "--worker-urls", strings.Join(urls, ","))
	resp := do(t, http.MethodPost, r.Front+"/update_weights_from_disk", "application/json",
		strings.NewReader(`{"model_path":"/ckpt/traced","weight_version":"traced-1"}`))
	if resp.Status != http.StatusOK {
		t.Fatalf("update = %d %s", resp.Status, resp.Body)
	}
	var fleetSpan *tracev1.Span
	var children []*tracev1.Span
	deadline := time.Now().Add(30 * time.Second)
	for {
		fleetSpan, children = nil, nil
		for _, s := range rec.find(nil) {
			if s.GetName() == "fleet /update_weights_from_disk" {
				fleetSpan = s
			}
		}
		if fleetSpan != nil {
			for _, s := range rec.find(map[string]string{"diffusion.worker": "*"}) {
				if s.GetName() == "worker POST /update_weights_from_disk" && string(s.GetParentSpanId()) == string(fleetSpan.GetSpanId()) {
					children = append(children, s)
				}
			}
		}
		if fleetSpan != nil && len(children) == len(ws) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30 s: fleet span %v, %d worker spans under it; the collector holds %v", fleetSpan != nil, len(children), spanTags(rec.find(nil)))
		}
		time.Sleep(100 * time.Millisecond)
	}
	trace := hex.EncodeToString(fleetSpan.GetTraceId())
	// The same trace began at Envoy and went through the registry API.
	// (Envoy sends its spans every few seconds.)
	names := map[string]bool{}
	for deadline := time.Now().Add(20 * time.Second); !names["ingress"] || !names["registry POST /update_weights_from_disk"]; {
		if time.Now().After(deadline) {
			t.Fatalf("trace %s holds %v: want Envoy's ingress span and the registry span; the collector holds %v", trace, names, spanTags(rec.find(nil)))
		}
		time.Sleep(100 * time.Millisecond)
		for _, s := range rec.find(nil) {
			if hex.EncodeToString(s.GetTraceId()) == trace {
				names[s.GetName()] = true
			}
		}
	}
	for i, w := range ws {
		var st struct {
			Traceparents []string `json:"traceparents"`
		}
		if err := json.Unmarshal(get(t, w.URL+"/stats").Body, &st); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, tp := range st.Traceparents {
			found = found || strings.Contains(tp, trace)
		}
		if !found {
			t.Fatalf("worker %d got traceparents %v, not trace %s", i, st.Traceparents, trace)
		}
	}
	// One child per worker, each with its answer's status.
	byWorker := map[string]bool{}
	for _, c := range children {
		w, _ := attr(c, "diffusion.worker")
		byWorker[w] = true
		status := int64(0)
		for _, kv := range c.GetAttributes() {
			if kv.GetKey() == "http.status_code" {
				status = kv.GetValue().GetIntValue()
			}
		}
		if status != http.StatusOK {
			t.Fatalf("worker span %s: status %d, want 200", w, status)
		}
	}
	for _, u := range urls {
		if !byWorker[u] {
			t.Fatalf("no span for worker %s among %v", u, byWorker)
		}
	}
	eventually(t, 10*time.Second, "the update's log line with its trace id", func() bool {
		return strings.Contains(r.out.String(), "trace_id="+trace)
	})
	// Removing a worker: its background drain is a child of the removal.
	if resp := postJSON(t, r.API+"/remove_worker", map[string]any{"url": urls[1]}); resp.Status != http.StatusOK {
		t.Fatalf("remove = %d %s", resp.Status, resp.Body)
	}
	eventually(t, 30*time.Second, "a drain span under the removal's span", func() bool {
		removals := map[string]bool{}
		for _, s := range rec.find(nil) {
			if s.GetName() == "registry POST /remove_worker" {
				removals[string(s.GetSpanId())] = true
			}
		}
		for _, s := range rec.find(map[string]string{"diffusion.worker": urls[1], "diffusion.drain_outcome": "removed"}) {
			if s.GetName() == "fleet drain" && removals[string(s.GetParentSpanId())] {
				return true
			}
		}
		return false
	})
}
