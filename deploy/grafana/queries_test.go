package grafana

import (
	"os"
	"slices"
	"testing"
)

func TestMetrics(t *testing.T) {
	for _, tc := range []struct {
		name, board string
		want        []PanelMetric
		err         bool
	}{
		{"not JSON", `{`, nil, true},
		{"no panels", `{}`, nil, false},
		{"labels and by() are not metrics", `{"panels": [{"title": "A", "targets": [
			{"expr": "sum by (envoy_cluster_name) (rate(envoy_cluster_upstream_rq{diffusion_router_x=\"y\"}[1m]))"}]}]}`,
			[]PanelMetric{{"A", "envoy_cluster_upstream_rq"}}, false},
		{"two metrics, one twice", `{"panels": [{"title": "B", "targets": [
			{"expr": "diffusion_router_queue_depth / diffusion_router_workers"}, {"expr": "diffusion_router_queue_depth"}]}]}`,
			[]PanelMetric{{"B", "diffusion_router_queue_depth"}, {"B", "diffusion_router_workers"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Metrics([]byte(tc.board))
			if (err != nil) != tc.err || !slices.Equal(got, tc.want) {
				t.Fatalf("Metrics = %v, %v; want %v (error %v)", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestTheShippedDashboardQueriesMetrics(t *testing.T) {
	b, err := os.ReadFile("diffusion-router.json")
	if err != nil {
		t.Fatal(err)
	}
	got, err := Metrics(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < 10 {
		t.Fatalf("only %d metrics found in the dashboard's queries: %v", len(got), got)
	}
}
