// Package bench is a load generator that speaks the sglang-diffusion API the
// way sglang's bench_serving.py does (closed loop at a concurrency, or open
// loop at a Poisson request rate), with a mixed workload, and reports the
// same keys.
package bench

import (
	"math"
	"sort"
	"time"
)

// Result is one request's outcome.
type Result struct {
	Start   time.Time
	Latency time.Duration
	OK      bool
	Worker  string
	Err     string
}

// Report is what a run reports, under bench_serving.py's JSON keys plus the
// per-worker request counts.
type Report struct {
	Duration          float64        `json:"duration"`
	CompletedRequests int            `json:"completed_requests"`
	FailedRequests    int            `json:"failed_requests"`
	ThroughputQPS     float64        `json:"throughput_qps"`
	LatencyMean       float64        `json:"latency_mean"`
	LatencyMedian     float64        `json:"latency_median"`
	LatencyP50        float64        `json:"latency_p50"`
	LatencyP90        float64        `json:"latency_p90"`
	LatencyP99        float64        `json:"latency_p99"`
	LatencyMax        float64        `json:"latency_max"`
	PerWorker         map[string]int `json:"per_worker_requests"`
	FirstError        string         `json:"first_error,omitempty"`
}

// Summarize computes the report of a run that took duration. Latencies are
// in seconds, over completed requests only.
func Summarize(results []Result, duration time.Duration) Report {
	r := Report{Duration: duration.Seconds(), PerWorker: map[string]int{}}
	lat := make([]float64, 0, len(results))
	for _, res := range results {
		if !res.OK {
			r.FailedRequests++
			if r.FirstError == "" {
				r.FirstError = res.Err
			}
			continue
		}
		r.CompletedRequests++
		lat = append(lat, res.Latency.Seconds())
		if res.Worker != "" {
			r.PerWorker[res.Worker]++
		}
	}
	if duration > 0 {
		r.ThroughputQPS = float64(r.CompletedRequests) / duration.Seconds()
	}
	if len(lat) == 0 {
		return r
	}
	sort.Float64s(lat)
	sum := 0.0
	for _, l := range lat {
		sum += l
	}
	r.LatencyMean = sum / float64(len(lat))
	r.LatencyP50 = Quantile(lat, 0.50)
	r.LatencyMedian = r.LatencyP50
	r.LatencyP90 = Quantile(lat, 0.90)
	r.LatencyP99 = Quantile(lat, 0.99)
	r.LatencyMax = lat[len(lat)-1]
	return r
}

// Quantile of sorted values, linearly interpolated between closest ranks
// (numpy's default, which bench_serving.py uses).
func Quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	if len(sorted) == 1 {
		return sorted[0]
	}
	pos := q * float64(len(sorted)-1)
	lo := int(math.Floor(pos))
	hi := min(lo+1, len(sorted)-1)
	return sorted[lo] + (pos-float64(lo))*(sorted[hi]-sorted[lo])
}
