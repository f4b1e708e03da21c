//go:build compose

package deploy

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/deploy/grafana"
	"github.com/diffrouter/diffusion-router/traces"
	"github.com/diffrouter/diffusion-router/xds/translate"
)

// TestComposeObserve brings the observe profile up with the demo fleet
// (Prometheus and Jaeger built offline: make compose-observe-test; Grafana
// has no offline build, so it is left out) and traces to Jaeger, as the
// compose file documents, then checks what an operator would look at:
// Prometheus scrapes the control plane and Envoy, every metric the
// Grafana dashboard queries is in Prometheus after a short rollout, and
// Jaeger holds a weight update as one trace from Envoy through the
// control plane to every worker.
func TestComposeObserve(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	prom, jaeger := freePort(t), freePort(t)
	cp := startCompose(t, ctx,
		[]string{"deploy/compose.offline.yaml", "deploy/compose.offline-observe.yaml", "deploy/compose.test.yaml", "deploy/compose.test-observe.yaml"},
		[]string{"demo", "observe"},
		"DIFFUSION_ROUTER_TEST_PROMETHEUS_PORT="+prom, "DIFFUSION_ROUTER_JAEGER_PORT="+jaeger,
		"DIFFUSION_ROUTER_OTLP_ENDPOINT=jaeger:4317")
	cp.compose("up", "-d", "--build", "xds-certs", "control-plane", "envoy", "fake-worker-1", "fake-worker-2", "fake-worker-3",
		"prometheus", "jaeger")
	base, promURL, jaegerURL := cp.base, "http://127.0.0.1:"+prom, "http://127.0.0.1:"+jaeger
	c := &http.Client{Timeout: 30 * time.Second}
	cp.waitDemoWorkers(c)

	// A short rollout: images (more at once than the slots, so some wait
	// in the queue), a video job, a weight update, a quarantined worker.
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			call(c, "POST", base+"/v1/images/generations", `{"prompt":"a red fox","num_inference_steps":2,"size":"256x256"}`)
		}()
	}
	wg.Wait()
	code, _, b := call(c, "POST", base+"/v1/videos", `{"prompt":"waves","num_inference_steps":2,"size":"256x256"}`)
	var job struct{ ID, Status string }
	if code != 200 || json.Unmarshal(b, &job) != nil {
		t.Fatalf("video create = %d %.300s", code, b)
	}
	eventually(t, ctx, time.Minute, "the video job to complete", func() bool {
		code, _, b := call(c, "GET", base+"/v1/videos/"+job.ID, "")
		return code == 200 && json.Unmarshal(b, &job) == nil && job.Status == "completed"
	})
	if code, _, b := call(c, "POST", base+"/update_weights_from_disk", `{"model_path":"/ckpt/observed","weight_version":"observed-1"}`); code != 200 {
		t.Fatalf("update = %d %.300s", code, b)
	}
	if code, _, b := call(c, "PUT", base+"/workers/"+url.PathEscape("http://fake-worker-2:31000"), `{"is_dead": true}`); code != 200 {
		t.Fatalf("quarantine = %d %.300s", code, b)
	}

	// Prometheus scrapes both.
	eventually(t, ctx, 2*time.Minute, "Prometheus to scrape the control plane and Envoy", func() bool {
		var r struct {
			Data struct {
				ActiveTargets []struct {
					Health string            `json:"health"`
					Labels map[string]string `json:"labels"`
				} `json:"activeTargets"`
			} `json:"data"`
		}
		code, _, b := call(c, "GET", promURL+"/api/v1/targets", "")
		if code != 200 || json.Unmarshal(b, &r) != nil {
			return false
		}
		up := map[string]bool{}
		for _, tg := range r.Data.ActiveTargets {
			up[tg.Labels["job"]] = tg.Health == "up"
		}
		return up["control-plane"] && up["envoy"]
	})
	// Every metric the dashboard queries is there.
	board, err := os.ReadFile("grafana/diffusion-router.json")
	if err != nil {
		t.Fatal(err)
	}
	queried, err := grafana.Metrics(board)
	if err != nil {
		t.Fatal(err)
	}
	missing := func() []string {
		var r struct {
			Data []string `json:"data"`
		}
		code, _, b := call(c, "GET", promURL+"/api/v1/label/__name__/values", "")
		if code != 200 || json.Unmarshal(b, &r) != nil {
			return []string{"(Prometheus answered " + strconv.Itoa(code) + ")"}
		}
		var out []string
		for _, q := range queried {
			if !slices.Contains(r.Data, q.Metric) {
				out = append(out, q.Panel+": "+q.Metric)
			}
		}
		return out
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) { // a poll interval, under a deadline
		m := missing()
		if len(m) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a minute, dashboard metrics missing from Prometheus: %s", strings.Join(m, ", "))
		}
	}
	if len(queried) < 10 {
		t.Fatalf("only %d metrics in the dashboard's queries", len(queried))
	}
	t.Logf("Prometheus holds all %d metrics the dashboard's panels query", len(queried))

	// Jaeger: the update is one trace from Envoy's span through the
	// registry and the fleet-wide call to a span per worker.
	type span struct {
		TraceID       string `json:"traceID"`
		SpanID        string `json:"spanID"`
		OperationName string `json:"operationName"`
		ProcessID     string `json:"processID"`
	}
	var trace struct {
		Spans     []span `json:"spans"`
		Processes map[string]struct {
			ServiceName string `json:"serviceName"`
		} `json:"processes"`
	}
	eventually(t, ctx, 2*time.Minute, "Jaeger to hold the update's trace from Envoy to every worker", func() bool {
		var r struct {
			Data []json.RawMessage `json:"data"`
		}
		q := url.Values{"service": {traces.ServiceName}, "operation": {"fleet /update_weights_from_disk"}, "limit": {"5"}, "lookback": {"1h"}}
		code, _, b := call(c, "GET", jaegerURL+"/api/traces?"+q.Encode(), "")
		if code != 200 || json.Unmarshal(b, &r) != nil || len(r.Data) == 0 {
			return false
		}
		if json.Unmarshal(r.Data[0], &trace) != nil {
			return false
		}
		services, workers := map[string]bool{}, 0
		for _, s := range trace.Spans {
			services[trace.Processes[s.ProcessID].ServiceName] = true
			if s.OperationName == "worker POST /update_weights_from_disk" {
				workers++
			}
		}
		return services[translate.TraceServiceName] && services[traces.ServiceName] && workers == 3
	})
	t.Logf("Jaeger: the update's trace holds %d spans from %d services", len(trace.Spans), len(trace.Processes))
	// And a generation's span reaches Jaeger from Envoy.
	eventually(t, ctx, time.Minute, "Envoy's spans of the generations in Jaeger", func() bool {
		var r struct {
			Data []json.RawMessage `json:"data"`
		}
		q := url.Values{"service": {translate.TraceServiceName}, "tags": {`{"diffusion.task":"image"}`}, "limit": {"20"}, "lookback": {"1h"}}
		code, _, b := call(c, "GET", jaegerURL+"/api/traces?"+q.Encode(), "")
		return code == 200 && json.Unmarshal(b, &r) == nil && len(r.Data) > 0
	})
}
