package tagger

import (
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"

	"github.com/diffrouter/diffusion-router/leastwork"
)

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

// setGauges exports one worker's outstanding work, requests, learned
// speed (µs per unit of cost) and the samples it was learned from as Envoy
// stats. A gauge is written only when its value changed.
func (p *picker) setGauges(h leastwork.Host) {
	g, ok := p.gauges[h.Addr]
	if !ok {
		name := statName(h.Addr)
		g = [4]proxywasm.MetricGauge{
			proxywasm.DefineGaugeMetric("diffusion_router.pick.outstanding_work." + name),
			proxywasm.DefineGaugeMetric("diffusion_router.pick.outstanding_requests." + name),
			proxywasm.DefineGaugeMetric("diffusion_router.pick.us_per_cost." + name),
			proxywasm.DefineGaugeMetric("diffusion_router.pick.speed_samples." + name),
		}
		p.gauges[h.Addr] = g
	}
	// Gauges only add; every thread's gauge of one name is one stat.
	for i, v := range []int64{h.Work, h.Requests, int64(h.MsPerCost * 1000), h.Samples} {
		if d := v - g[i].Value(); d != 0 {
			g[i].Add(d)
		}
	}
}

// setForeign shows the requests a worker says it holds that no Envoy
// counts (diffusion_router.pick.foreign_requests.<worker>).
func (p *picker) setForeign(addr string, n int64) {
	g, ok := p.foreign[addr]
	if !ok {
		g = proxywasm.DefineGaugeMetric("diffusion_router.pick.foreign_requests." + statName(addr))
		p.foreign[addr] = g
	}
	if d := n - g.Value(); d != 0 {
		g.Add(d)
	}
}

// statName is a worker address as a stat name part.
func statName(addr string) string {
	return strings.NewReplacer(".", "_", ":", "_", "[", "", "]", "").Replace(addr)
}
