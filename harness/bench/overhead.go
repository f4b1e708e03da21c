package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/diffrouter/diffusion-router/harness/fakeworker"
)

// PathCost is how one path to the workers performs.
type PathCost struct {
	Path string `json:"path"`
	// Sequential requests, one at a time.
	SeqP50 float64 `json:"sequential_p50_ms"`
	SeqP99 float64 `json:"sequential_p99_ms"`
	// Open loop at the target rate.
	Rate     float64 `json:"rate_rps"`
	RateP50  float64 `json:"rate_p50_ms"`
	RateP99  float64 `json:"rate_p99_ms"`
	RateFail int     `json:"rate_failed"`
	// Closed loop at concurrency 64: the most requests per second carried.
	MaxQPS float64 `json:"max_qps"`
}

// OverheadConfig measures the router's own cost with near-instant workers.
type OverheadConfig struct {
	RouterBin string
	Workers   int
	Requests  int
	Rate      float64
	// RouterArgs are extra router flags (for example --wasm-filter none).
	RouterArgs []string
	Log        io.Writer
}

// RunOverhead compares talking to the workers directly, through the router
// (Envoy with the filter) and through a minimal Go reverse proxy.
func RunOverhead(ctx context.Context, oc OverheadConfig) ([]PathCost, error) {
	cfg := fakeworker.DefaultConfig()
	cfg.TimeScale = 0
	urls, stop, err := Workers(oc.Workers, cfg)
	if err != nil {
		return nil, err
	}
	defer stop()
	r, err := StartRouter(oc.RouterBin, nil, append(append([]string{}, oc.RouterArgs...), append([]string{"--worker-urls"}, urls...)...)...)
	if err != nil {
		return nil, err
	}
	defer r.Stop()
	proxy, stopProxy, err := reverseProxy(urls)
	if err != nil {
		return nil, err
	}
	defer stopProxy()
	mix := []Shape{{Weight: 1, Width: 512, Height: 512, Steps: 4, Frames: 1}}
	var out []PathCost
	for _, p := range []struct {
		name    string
		targets []string
	}{{"direct", urls}, {"router " + strings.Join(oc.RouterArgs, " "), []string{r.Front}}, {"httputil.ReverseProxy", []string{proxy}}} {
		pc := PathCost{Path: p.name, Rate: oc.Rate}
		run := func(c Config) (Report, error) {
			c.Targets, c.Task, c.Mix = p.targets, "text-to-image", mix
			res, dur, err := Run(ctx, c)
			return Summarize(res, dur), err
		}
		if _, err := run(Config{NumPrompts: 200, MaxConcurrency: 8}); err != nil { // warm up
			return out, err
		}
		seq, err := run(Config{NumPrompts: oc.Requests, MaxConcurrency: 1})
		if err != nil {
			return out, err
		}
		pc.SeqP50, pc.SeqP99 = seq.LatencyP50*1000, seq.LatencyP99*1000
		open, err := run(Config{NumPrompts: oc.Requests, RequestRate: oc.Rate, MaxConcurrency: 512, Seed: 3})
		if err != nil {
			return out, err
		}
		pc.RateP50, pc.RateP99, pc.RateFail = open.LatencyP50*1000, open.LatencyP99*1000, open.FailedRequests
		closed, err := run(Config{NumPrompts: 4 * oc.Requests, MaxConcurrency: 64})
		if err != nil {
			return out, err
		}
		pc.MaxQPS = closed.ThroughputQPS
		if oc.Log != nil {
			fmt.Fprintf(oc.Log, "%-26s sequential p50 %.2f ms p99 %.2f ms | %.0f rps p50 %.2f ms p99 %.2f ms (%d failed) | max %.0f rps\n",
				p.name, pc.SeqP50, pc.SeqP99, pc.Rate, pc.RateP50, pc.RateP99, pc.RateFail, pc.MaxQPS)
		}
		out = append(out, pc)
	}
	return out, nil
}

// reverseProxy is the yardstick: a minimal single-process Go proxy that
// spreads requests round-robin.
func reverseProxy(urls []string) (string, func(), error) {
	targets := make([]*url.URL, len(urls))
	for i, u := range urls {
		t, err := url.Parse(u)
		if err != nil {
			return "", nil, err
		}
		targets[i] = t
	}
	var next atomic.Uint64
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(targets[next.Add(1)%uint64(len(targets))])
		},
		Transport: &http.Transport{MaxIdleConnsPerHost: 256},
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	return "http://" + lis.Addr().String(), func() { _ = srv.Close() }, nil
}
