package e2e

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"
)

// BenchmarkFilterOverhead measures what the Wasm filter adds to a request in
// the real Envoy: the same near-instant worker behind three routers, one
// with the filter, one without, one with the filter picking workers
// (least-work), sequential requests, p50 and p99 reported.
// Run with `make bench-filter`; numbers are in docs/benchmarks.md.
func BenchmarkFilterOverhead(b *testing.B) {
	w := startWorker(b, "--time-scale", "0")
	with := startRouter(b, "--log-level", "warning", "--worker-urls", w.URL)
	without := startRouter(b, "--log-level", "warning", "--wasm-filter", "none", "--worker-urls", w.URL)
	picking := startRouter(b, "--log-level", "warning", "--routing-algorithm", "least-work", "--worker-urls", w.URL)
	body := `{"prompt":"p","num_inference_steps":4,"size":"512x512"}`
	for _, c := range []struct {
		name string
		r    *routerProc
	}{{"with-filter", with}, {"without-filter", without}, {"with-filter-picking", picking}} {
		b.Run(c.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			for range 200 { // warm up connections and the Wasm VMs
				_, _ = tryDo(context.Background(), "POST", c.r.Front+"/v1/images/generations", "application/json", strings.NewReader(body))
			}
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				resp, err := tryDo(context.Background(), "POST", c.r.Front+"/v1/images/generations", "application/json", strings.NewReader(body))
				if err != nil || resp.Status != 200 {
					b.Fatalf("request: %v %d", err, resp.Status)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
			b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds()), "p99-us")
		})
	}
}
