package workerword

import dto "github.com/prometheus/client_model/go"

// The scheduler gauges' names, as sglang-diffusion's
// DiffusionMetricsCollector defines them.
const (
	MetricQueued  = "sglang:diffusion_num_queue_reqs"
	MetricRunning = "sglang:diffusion_num_running_reqs"
)

// Scheduler is a worker's scheduler as it says: generations waiting and
// running.
type Scheduler struct {
	Queued, Running int64
}

// scheduler reads the two gauges; both must be there.
func scheduler(families map[string]*dto.MetricFamily, w *Word) bool {
	q, okQ := sumGauge(families, MetricQueued)
	r, okR := sumGauge(families, MetricRunning)
	if !okQ || !okR {
		return false
	}
	w.Scheduler = &Scheduler{Queued: int64(q + 0.5), Running: int64(r + 0.5)}
	return true
}
