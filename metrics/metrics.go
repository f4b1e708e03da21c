// Package metrics is the control plane's Prometheus instrumentation: workers
// by state, connected Envoys and xDS pushes, weight-update outcomes and
// durations, and health-probe results. It is served on the direct registry
// API port at /metrics (the front port's /metrics belongs to the workers).
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/diffrouter/diffusion-router/envoyadmin"
	"github.com/diffrouter/diffusion-router/registry"
)

// Metrics holds the control plane's instruments.
type Metrics struct {
	reg                 *prometheus.Registry
	xdsPushes           prometheus.Counter
	weightUpdates       *prometheus.CounterVec
	weightUpdateSeconds prometheus.Histogram
	probes              *prometheus.CounterVec
	transitions         *prometheus.CounterVec
	queueWait           *prometheus.HistogramVec
}

// New registers the instruments. fleet and nodes are read at scrape time.
func New(fleet *registry.Registry, nodes func() []envoyadmin.Node) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		xdsPushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "diffusion_router_xds_pushes_total", Help: "Configurations published to the Envoys.",
		}),
		weightUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "diffusion_router_weight_updates_total", Help: "Fleet-wide weight updates by outcome.",
		}, []string{"outcome"}),
		weightUpdateSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "diffusion_router_weight_update_seconds", Help: "Duration of fleet-wide weight updates.",
			Buckets: prometheus.ExponentialBuckets(0.1, 2, 14),
		}),
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "diffusion_router_health_probes_total", Help: "Health probes of workers by result.",
		}, []string{"result"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "diffusion_router_worker_transitions_total", Help: "Worker state changes by the state left, the state entered and their cause.",
		}, []string{"from", "to", "cause"}),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "diffusion_router_queue_wait_seconds", Help: "How long granted requests waited in the router-owned queue, by priority.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 12),
		}, []string{"priority"}),
	}
	m.reg.MustRegister(m.xdsPushes, m.weightUpdates, m.weightUpdateSeconds, m.probes, m.transitions,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&fleetCollector{fleet: fleet, nodes: nodes})
	return m
}

// Handler serves the metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// XDSPush counts a published configuration.
func (m *Metrics) XDSPush() { m.xdsPushes.Inc() }

// WeightUpdate records a fleet-wide update.
func (m *Metrics) WeightUpdate(outcome string, d time.Duration) {
	m.weightUpdates.WithLabelValues(outcome).Inc()
	m.weightUpdateSeconds.Observe(d.Seconds())
}

// Transition counts a worker's state change.
func (m *Metrics) Transition(from, to, cause string) {
	m.transitions.WithLabelValues(from, to, cause).Inc()
}

// Probe records a health probe.
func (m *Metrics) Probe(ok bool) {
	result := "ok"
	if !ok {
		result = "failed"
	}
	m.probes.WithLabelValues(result).Inc()
}

var (
	workersDesc   = prometheus.NewDesc("diffusion_router_workers", "Registered workers by state.", []string{"state"}, nil)
	asleepDesc    = prometheus.NewDesc("diffusion_router_workers_asleep", "Workers whose memory is released.", nil, nil)
	envoysDesc    = prometheus.NewDesc("diffusion_router_envoys_connected", "Envoys connected over xDS, and how many of them run the current configuration.", []string{"synced"}, nil)
	genDesc       = prometheus.NewDesc("diffusion_router_registry_generation", "Registry generation (changes since start).", nil, nil)
	storeOKDesc   = prometheus.NewDesc("diffusion_router_store_healthy", "1 when the registry store's last write worked (or there is no store), 0 while it fails.", nil, nil)
	storeErrsDesc = prometheus.NewDesc("diffusion_router_store_write_failures_total", "Registry changes refused because the store could not write them.", nil, nil)
)

// fleetCollector reads the registry and the xDS server at scrape time, so
// the gauges can never drift from the state they describe.
type fleetCollector struct {
	fleet *registry.Registry
	nodes func() []envoyadmin.Node
}

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- workersDesc
	ch <- asleepDesc
	ch <- envoysDesc
	ch <- genDesc
	ch <- storeOKDesc
	ch <- storeErrsDesc
}

func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	snap := c.fleet.Snapshot()
	counts := snap.Count()
	for _, st := range registry.States {
		ch <- prometheus.MustNewConstMetric(workersDesc, prometheus.GaugeValue, float64(counts.ByState[st]), string(st))
	}
	ch <- prometheus.MustNewConstMetric(asleepDesc, prometheus.GaugeValue, float64(counts.Asleep))
	synced, unsynced := 0, 0
	for _, n := range c.nodes() {
		if n.Synced {
			synced++
		} else {
			unsynced++
		}
	}
	ch <- prometheus.MustNewConstMetric(envoysDesc, prometheus.GaugeValue, float64(synced), "true")
	ch <- prometheus.MustNewConstMetric(envoysDesc, prometheus.GaugeValue, float64(unsynced), "false")
	ch <- prometheus.MustNewConstMetric(genDesc, prometheus.CounterValue, float64(snap.Generation))
	failures, storeErr := c.fleet.StoreHealth()
	healthy := 1.0
	if storeErr != nil {
		healthy = 0
	}
	ch <- prometheus.MustNewConstMetric(storeOKDesc, prometheus.GaugeValue, healthy)
	ch <- prometheus.MustNewConstMetric(storeErrsDesc, prometheus.CounterValue, float64(failures))
}
