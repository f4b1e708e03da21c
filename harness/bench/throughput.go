package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/diffrouter/diffusion-router/harness/fakeworker"
)

// ThroughputRow is one policy on one fleet size: how many requests per
// second the router carries at a fixed concurrency, their p99, and what
// Envoy and the control plane spend.
type ThroughputRow struct {
	Workers    int     `json:"workers"`
	Policy     string  `json:"policy"`
	Requests   int     `json:"requests"`
	Failed     int     `json:"failed"`
	RPS        float64 `json:"requests_per_second"`
	P50MS      float64 `json:"p50_ms"`
	P99MS      float64 `json:"p99_ms"`
	EnvoyCPU   float64 `json:"envoy_cpu_percent"`
	EnvoyUSReq float64 `json:"envoy_cpu_us_per_request"`
	// ControlPlaneCPU is the control plane's share of a core meanwhile
	// (the filters' syncs, the observe loop).
	ControlPlaneCPU float64 `json:"control_plane_cpu_percent"`
}

// ThroughputConfig loads the router's policies in turn on one fleet of
// fast stand-ins per size: the cost of picking shows as throughput.
type ThroughputConfig struct {
	RouterBin   string
	Sizes       []int
	Policies    []string
	Service     time.Duration // each request's service time
	Concurrency int
	Requests    int // per policy and size
	Log         io.Writer
}

// RunThroughput measures every size and policy.
func RunThroughput(ctx context.Context, tc ThroughputConfig) ([]ThroughputRow, error) {
	var out []ThroughputRow
	for _, n := range tc.Sizes {
		cfg := fakeworker.DefaultConfig()
		cfg.TimeScale, cfg.Base, cfg.PerStep, cfg.Jitter = 1, tc.Service, 0, 0
		urls, stop, err := Workers(n, cfg)
		if err != nil {
			return out, err
		}
		for _, policy := range tc.Policies {
			row, err := throughputCell(ctx, tc, urls, policy)
			if err != nil {
				stop()
				return out, fmt.Errorf("%d workers, %s: %w", n, policy, err)
			}
			if tc.Log != nil {
				fmt.Fprintf(tc.Log, "%5d workers %-13s %7.0f req/s  p50 %6.1f ms  p99 %6.1f ms  Envoy %4.0f %% CPU (%5.0f us/request)  control plane %3.0f %%  failed %d\n",
					n, policy, row.RPS, row.P50MS, row.P99MS, row.EnvoyCPU, row.EnvoyUSReq, row.ControlPlaneCPU, row.Failed)
			}
			out = append(out, row)
		}
		stop()
	}
	return out, nil
}

func throughputCell(ctx context.Context, tc ThroughputConfig, urls []string, policy string) (ThroughputRow, error) {
	row := ThroughputRow{Workers: len(urls), Policy: policy}
	r, err := StartRouter(tc.RouterBin, nil, append(PolicyArgs(policy), "--worker-urls", strings.Join(urls, ","),
		"--health-check-interval", "30", "--envoy-concurrency", "2")...)
	if err != nil {
		return row, err
	}
	defer r.Stop()
	if err := waitHealthy(ctx, r.Front, len(urls)); err != nil {
		return row, err
	}
	envoyPID := ChildPID(r.PID, "envoy")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: tc.Concurrency * 2}}
	load := Config{Targets: []string{r.Front}, Task: "text-to-image", NumPrompts: tc.Requests, MaxConcurrency: tc.Concurrency,
		Mix: []Shape{{Weight: 1, Width: 512, Height: 512, Steps: 4, Frames: 1}}, Seed: 1, Timeout: time.Minute, Client: client}
	// A short warm-up: connections, the filters' first views.
	warm := load
	warm.NumPrompts = min(tc.Requests, 4*tc.Concurrency)
	if _, _, err := Run(ctx, warm); err != nil {
		return row, err
	}
	envoyBefore, cpBefore := cpuTime(envoyPID), cpuTime(r.PID)
	results, took, err := Run(ctx, load)
	if err != nil {
		return row, err
	}
	envoyCPU, cpCPU := cpuTime(envoyPID)-envoyBefore, cpuTime(r.PID)-cpBefore
	rep := Summarize(results, took)
	row.Requests, row.Failed, row.RPS = rep.CompletedRequests, rep.FailedRequests, rep.ThroughputQPS
	row.P50MS, row.P99MS = rep.LatencyP50*1000, rep.LatencyP99*1000
	row.EnvoyCPU = 100 * envoyCPU.Seconds() / took.Seconds()
	row.ControlPlaneCPU = 100 * cpCPU.Seconds() / took.Seconds()
	if rep.CompletedRequests > 0 {
		row.EnvoyUSReq = float64(envoyCPU.Microseconds()) / float64(rep.CompletedRequests)
	}
	if rep.FailedRequests > 0 {
		return row, fmt.Errorf("%d requests failed: %s", rep.FailedRequests, rep.FirstError)
	}
	return row, nil
}

// waitHealthy polls the router's /health until n workers are routable.
func waitHealthy(ctx context.Context, front string, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	var last string
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, front+"/health", nil)
		if err != nil {
			return err
		}
		if resp, err := http.DefaultClient.Do(req); err == nil {
			var h struct {
				Healthy int `json:"healthy_workers"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
			if h.Healthy >= n {
				return nil
			}
			last = strconv.Itoa(h.Healthy)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s of %d workers routable: %w", last, n, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// cpuTime is a process's user and system CPU time so far (0 for none).
func cpuTime(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	_, f, ok := procStat(pid)
	if !ok || len(f) < 13 {
		return 0
	}
	// utime and stime are fields 14 and 15 of stat, in clock ticks
	// (100 a second on Linux).
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}
