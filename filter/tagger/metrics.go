package tagger

import "github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"

// metrics are Envoy stats (they appear in /stats/prometheus with the
// wasmcustom prefix).
type metrics struct {
	requests, errors map[Task]proxywasm.MetricCounter
	parseErrors      proxywasm.MetricCounter
	filterErrors     proxywasm.MetricCounter
	bodiesSkipped    proxywasm.MetricCounter
	unknownJobIDs    proxywasm.MetricCounter
	bookErrors       proxywasm.MetricCounter
	stalledCut       proxywasm.MetricCounter
	modelFallbacks   proxywasm.MetricCounter
	cost             proxywasm.MetricHistogram
	upstreamMS       proxywasm.MetricHistogram
	routerMS         proxywasm.MetricHistogram
}

func newMetrics() *metrics {
	m := &metrics{requests: map[Task]proxywasm.MetricCounter{}, errors: map[Task]proxywasm.MetricCounter{}}
	for _, t := range Tasks {
		m.requests[t] = proxywasm.DefineCounterMetric("diffusion_router.requests." + string(t))
		m.errors[t] = proxywasm.DefineCounterMetric("diffusion_router.errors." + string(t))
	}
	m.parseErrors = proxywasm.DefineCounterMetric("diffusion_router.filter.parse_errors")
	m.filterErrors = proxywasm.DefineCounterMetric("diffusion_router.filter.errors")
	m.bodiesSkipped = proxywasm.DefineCounterMetric("diffusion_router.filter.bodies_skipped")
	m.unknownJobIDs = proxywasm.DefineCounterMetric("diffusion_router.filter.unknown_job_ids")
	m.bookErrors = proxywasm.DefineCounterMetric("diffusion_router.filter.job_book_errors")
	m.stalledCut = proxywasm.DefineCounterMetric("diffusion_router.filter.stalled_requests_cut")
	m.modelFallbacks = proxywasm.DefineCounterMetric("diffusion_router.model_fallbacks")
	m.cost = proxywasm.DefineHistogramMetric("diffusion_router.cost_mpix_steps")
	m.upstreamMS = proxywasm.DefineHistogramMetric("diffusion_router.upstream_ms")
	m.routerMS = proxywasm.DefineHistogramMetric("diffusion_router.router_ms")
	return m
}
