package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// WorkerSample is one worker as the per-worker metrics show it: its state
// and weights (registry), the requests the Envoys sent it (their admin
// counters), and with least-work routing what the filters count on it and
// the speed learned for it.
type WorkerSample struct {
	Worker, State, WeightVersion string
	Requests                     uint64
	// Outstanding requests and work, and ms per unit of cost; Picked is
	// false without least-work routing (the gauges are not exported).
	Picked          bool
	OutstandingWork int64
	OutstandingReqs int64
	MsPerCost       float64
	// Suspect: a request on the worker runs far past its expected time.
	Suspect bool
}

var (
	workerInfoDesc = prometheus.NewDesc("diffusion_router_worker_info", "One per registered worker: its state and the weight version it holds.",
		[]string{"worker", "state", "weight_version"}, nil)
	workerReqsDesc = prometheus.NewDesc("diffusion_router_worker_requests_total", "Requests the Envoys sent the worker (summed over Envoys, as their admin interfaces count them).",
		[]string{"worker"}, nil)
	workerWorkDesc = prometheus.NewDesc("diffusion_router_worker_outstanding_work", "Estimated cost (megapixel-steps) of the worker's requests not answered yet, over every Envoy (least-work).",
		[]string{"worker"}, nil)
	workerOutDesc = prometheus.NewDesc("diffusion_router_worker_outstanding_requests", "The worker's requests not answered yet, over every Envoy (least-work).",
		[]string{"worker"}, nil)
	workerSpeedDesc = prometheus.NewDesc("diffusion_router_worker_ms_per_cost", "The worker's learned milliseconds per unit of cost (least-work; 0 until measured).",
		[]string{"worker"}, nil)
	workerSuspectDesc = prometheus.NewDesc("diffusion_router_worker_suspect", "1 while a request on the worker runs far past its expected time (it may hang): no grants or picks until it answers (least-work).",
		[]string{"worker"}, nil)
)

// workerCollector reads the workers at scrape time. Its label space is the
// fleet: one series per registered worker.
type workerCollector struct{ samples func() []WorkerSample }

func (c workerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{workerInfoDesc, workerReqsDesc, workerWorkDesc, workerOutDesc, workerSpeedDesc, workerSuspectDesc} {
		ch <- d
	}
}

func (c workerCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.samples() {
		ch <- prometheus.MustNewConstMetric(workerInfoDesc, prometheus.GaugeValue, 1, s.Worker, s.State, s.WeightVersion)
		ch <- prometheus.MustNewConstMetric(workerReqsDesc, prometheus.CounterValue, float64(s.Requests), s.Worker)
		if s.Picked {
			ch <- prometheus.MustNewConstMetric(workerWorkDesc, prometheus.GaugeValue, float64(s.OutstandingWork), s.Worker)
			ch <- prometheus.MustNewConstMetric(workerOutDesc, prometheus.GaugeValue, float64(s.OutstandingReqs), s.Worker)
			ch <- prometheus.MustNewConstMetric(workerSpeedDesc, prometheus.GaugeValue, s.MsPerCost, s.Worker)
			suspect := 0.0
			if s.Suspect {
				suspect = 1
			}
			ch <- prometheus.MustNewConstMetric(workerSuspectDesc, prometheus.GaugeValue, suspect, s.Worker)
		}
	}
}

// Workers registers the per-worker metrics, read from samples at scrape
// time.
func (m *Metrics) Workers(samples func() []WorkerSample) {
	m.reg.MustRegister(workerCollector{samples})
}
