package e2e

import (
	"context"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/deploy/grafana"
)

// TestDashboardQueriesExist: every metric a panel of the Grafana dashboard
// queries is one the control plane or Envoy exports, once the router has
// served (and queued) requests, quarantined a worker and updated weights.
func TestDashboardQueriesExist(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../deploy/grafana/diffusion-router.json")
	if err != nil {
		t.Fatal(err)
	}
	queried, err := grafana.Metrics(b)
	if err != nil {
		t.Fatal(err)
	}
	_, urls := startFleet(t, 2, "--time-scale", "1", "--base", "100ms", "--per-step", "0", "--jitter", "0")
	r := startQueueRouter(t, urls)
	var wg sync.WaitGroup
	for range 6 { // more than the slots: some wait in the queue
		wg.Add(1)
		go func() { defer wg.Done(); sendImage(context.Background(), r.Front, nil) }()
	}
	wg.Wait()
	if res := postJSON(t, r.Front+"/update_weights_from_disk", map[string]any{"model_path": "/ckpt/dash"}); res.Status != http.StatusOK {
		t.Fatalf("update: %d %s", res.Status, res.Body)
	}
	id := strings.NewReplacer(":", "%3A", "/", "%2F").Replace(urls[0])
	if res := do(t, http.MethodPut, r.Front+"/workers/"+id, "application/json", strings.NewReader(`{"is_dead": true}`)); res.Status != http.StatusOK {
		t.Fatalf("quarantine: %d %s", res.Status, res.Body)
	}
	exported := ""
	eventually(t, 10*time.Second, "the control plane's metrics to show the run", func() bool {
		exported = string(get(t, r.API+"/metrics").Body) + string(get(t, r.Admin+"/stats/prometheus").Body)
		return strings.Contains(exported, "diffusion_router_queue_wait_seconds_bucket") && strings.Contains(exported, "diffusion_router_worker_outstanding_work")
	})
	for _, q := range queried {
		if !regexp.MustCompile(`(?m)^` + q.Metric + `[{ ]`).MatchString(exported) {
			t.Errorf("panel %q queries %s, which neither the control plane nor Envoy exports", q.Panel, q.Metric)
		}
	}
	if len(queried) < 10 {
		t.Fatalf("only %d metric names found in the dashboard's queries", len(queried))
	}
}
