package bench

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/harness/fakeworker"
)

func TestQuantile(t *testing.T) {
	tests := []struct {
		vals []float64
		q    float64
		want float64
	}{
		{[]float64{1}, 0.99, 1},
		{[]float64{1, 2, 3, 4}, 0.5, 2.5},
		{[]float64{1, 2, 3, 4, 5}, 0.5, 3},
		{[]float64{0, 10}, 0.99, 9.9},
		{[]float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 0.9, 9.1},
	}
	for _, tt := range tests {
		if got := Quantile(tt.vals, tt.q); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("Quantile(%v, %v) = %v, want %v", tt.vals, tt.q, got, tt.want)
		}
	}
	if !math.IsNaN(Quantile(nil, 0.5)) {
		t.Error("quantile of nothing is not NaN")
	}
}

func TestSummarize(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	results := []Result{
		{OK: true, Latency: ms(100), Worker: "a"},
		{OK: true, Latency: ms(300), Worker: "b"},
		{OK: true, Latency: ms(200), Worker: "a"},
		{OK: false, Err: "status 502"},
	}
	r := Summarize(results, 2*time.Second)
	if r.CompletedRequests != 3 || r.FailedRequests != 1 || r.FirstError != "status 502" {
		t.Fatalf("counts = %+v", r)
	}
	if r.ThroughputQPS != 1.5 || math.Abs(r.LatencyMean-0.2) > 1e-9 || r.LatencyMedian != 0.2 || r.LatencyMax != 0.3 {
		t.Fatalf("stats = %+v", r)
	}
	if math.Abs(r.LatencyP99-0.298) > 1e-9 {
		t.Fatalf("p99 = %v, want 0.298", r.LatencyP99)
	}
	if r.PerWorker["a"] != 2 || r.PerWorker["b"] != 1 {
		t.Fatalf("per worker = %v", r.PerWorker)
	}
	empty := Summarize(nil, 0)
	if empty.CompletedRequests != 0 || empty.ThroughputQPS != 0 {
		t.Fatalf("empty = %+v", empty)
	}
}

func TestParseMix(t *testing.T) {
	mix, err := ParseMix("3:512x512:4, 1:1024x1024:50:16")
	if err != nil || len(mix) != 2 || mix[0].Weight != 3 || mix[1].Frames != 16 || mix[1].Width != 1024 {
		t.Fatalf("ParseMix = %+v %v", mix, err)
	}
	for _, bad := range []string{"", "1:512:4", "0:512x512:4", "x:512x512:4", "1:512x512:0", "1:8x8:4", "1:512x512:4:0", "1:2:3:4:5"} {
		if _, err := ParseMix(bad); err == nil {
			t.Errorf("ParseMix(%q) accepted", bad)
		}
	}
}

// TestRunAgainstFakeWorkers runs both loop kinds against two in-process fake
// workers spread by the client, and checks the accounting.
func TestRunAgainstFakeWorkers(t *testing.T) {
	cfg := fakeworker.DefaultConfig()
	cfg.TimeScale, cfg.TaskType = 0.0001, "T2V"
	targets, stop, err := Workers(2, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	mix, _ := ParseMix("1:256x256:4:2,1:512x512:8:1")
	for _, c := range []Config{
		{Targets: targets, Task: "text-to-image", NumPrompts: 50, MaxConcurrency: 4, Mix: mix, Seed: 1},
		{Targets: targets, Task: "text-to-video", NumPrompts: 20, RequestRate: 200, Mix: mix, Seed: 2},
	} {
		results, dur, err := Run(context.Background(), c)
		if err != nil {
			t.Fatal(err)
		}
		r := Summarize(results, dur)
		if r.CompletedRequests+r.FailedRequests != c.NumPrompts || r.FailedRequests != 0 {
			t.Fatalf("%s: %+v", c.Task, r)
		}
		sum := 0
		for _, n := range r.PerWorker {
			sum += n
		}
		if sum != r.CompletedRequests || len(r.PerWorker) != 2 {
			t.Fatalf("%s: per-worker counts %v do not add up to %d", c.Task, r.PerWorker, r.CompletedRequests)
		}
	}
	if err := (Config{Targets: targets, Task: "x", NumPrompts: 1, MaxConcurrency: 1, Mix: mix}).Validate(); err == nil {
		t.Fatal("bad task accepted")
	}
}

func TestRoutingConfigValidate(t *testing.T) {
	ok := RoutingConfig{Workers: 2, Fleets: []string{"equal"}, SlowFactor: 2, Replicas: []int{1}, Policies: []string{"least-work"},
		Concurrency: 1, NumPrompts: 1}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	for name, mutate := range map[string]func(*RoutingConfig){
		"one worker":     func(c *RoutingConfig) { c.Workers = 1 },
		"fleet":          func(c *RoutingConfig) { c.Fleets = []string{"fast"} },
		"replicas":       func(c *RoutingConfig) { c.Replicas = []int{5} },
		"slow factor":    func(c *RoutingConfig) { c.SlowFactor = 0.5 },
		"task":           func(c *RoutingConfig) { c.Task = "image-to-video" },
		"no policies":    func(c *RoutingConfig) { c.Policies = nil },
		"no concurrency": func(c *RoutingConfig) { c.Concurrency = 0 },
	} {
		c := ok
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	video := ok
	video.Task = "text-to-video"
	if err := video.Validate(); err != nil {
		t.Fatalf("text-to-video refused: %v", err)
	}
}
