package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// A worker dying under load costs the client nothing, whatever the policy:
// the requests it held and the ones sent to it before anyone knew are
// retried on the others. Under least-request the dead worker, holding no
// requests, is the one a full scan keeps choosing, so its first connect
// failure must take it out at once. Three workers, bench_serving-like
// load (150 requests at concurrency 8), one killed early, three runs per
// policy.
func TestWorkerKilledUnderLoadCostsNothing(t *testing.T) {
	for _, policy := range []string{"least-request", "round-robin", "random", "least-work", "least-work+queue"} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			args, runs := []string{"--routing-algorithm", policy}, 3
			if strings.HasPrefix(policy, "least-work") {
				runs = 2 // the filter's picks, with and without the queue: two kills each keep the suite short
			}
			if p, ok := strings.CutSuffix(policy, "+queue"); ok {
				args = []string{"--routing-algorithm", p, "--queue"}
			}
			for run := range runs {
				workers, urls := startFleet(t, 3, "--time-scale", "0.05")
				r := startRouter(t, append(append(args, "--worker-urls"), urls...)...)
				eventually(t, 20*time.Second, "all workers healthy", func() bool {
					return get(t, r.Front+"/health").JSON(t)["healthy_workers"] == 3.0
				})
				g := &loadGen{}
				done := make(chan struct{})
				go func() { defer close(done); g.run(r.Front, `{"prompt":"x","num_inference_steps":20}`, 150, 8) }()
				eventually(t, 30*time.Second, "load under way", func() bool { return g.sent.Load() >= 20 })
				workers[run%3].kill()
				<-done
				if f := g.failed.Load(); f != 0 {
					t.Fatalf("run %d: %d of 150 requests failed after a worker was killed (first: %v); envoy: %s", run, f,
						g.firstFailure.Load(), retryStats(t, r.Admin))
				}
				eventually(t, 10*time.Second, "the killed worker quarantined", func() bool {
					return stateOf(t, r.Front, workers[run%3].URL) == "quarantined"
				})
				t.Logf("run %d: 150/150 ok; %s", run, retryStats(t, r.Admin))
				r.stop()
			}
		})
	}
}

func retryStats(t *testing.T, admin string) string {
	t.Helper()
	out := ""
	for _, s := range []string{"upstream_rq_retry", "upstream_rq_retry_limit_exceeded", "upstream_cx_connect_fail", "outlier_detection.ejections_enforced_total"} {
		out += fmt.Sprintf("%s=%d ", s, envoyStat(t, admin, "cluster.workers."+s))
	}
	return out
}
