package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/diffrouter/diffusion-router/queue"
)

var (
	queueWaitingDesc = prometheus.NewDesc("diffusion_router_queue_waiting", "Requests waiting in the router-owned queue, by priority.", []string{"priority"}, nil)
	queueOldestDesc  = prometheus.NewDesc("diffusion_router_queue_oldest_wait_seconds", "How long the oldest waiting request has waited.", nil, nil)
	queueEndsDesc    = prometheus.NewDesc("diffusion_router_queue_requests_total", "Requests that left the router-owned queue, by how: granted a worker, refused (full), cancelled (client gone), timed_out.", []string{"outcome"}, nil)
	queueRulesDesc   = prometheus.NewDesc("diffusion_router_queue_version_rules_total", "Requests with weight-version rules (x-diffusion-weight-version, x-diffusion-min-weight-version, x-diffusion-group), by outcome: granted a worker the rules accept, or refused for them (409).", []string{"outcome"}, nil)
)

// queueCollector reads the queue at scrape time.
type queueCollector struct{ q *queue.Queue }

func (c queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queueWaitingDesc
	ch <- queueOldestDesc
	ch <- queueEndsDesc
	ch <- queueRulesDesc
}

func (c queueCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.q.Status()
	zero := true // the default priority's series exists even when nothing waits
	for _, b := range st.Priorities {
		ch <- prometheus.MustNewConstMetric(queueWaitingDesc, prometheus.GaugeValue, float64(b.Waiting), strconv.Itoa(b.Priority))
		zero = zero && b.Priority != 0
	}
	if zero {
		ch <- prometheus.MustNewConstMetric(queueWaitingDesc, prometheus.GaugeValue, 0, "0")
	}
	ch <- prometheus.MustNewConstMetric(queueOldestDesc, prometheus.GaugeValue, st.OldestWaitSeconds)
	for outcome, n := range map[string]uint64{"granted": st.Granted, "refused": st.Refused, "cancelled": st.Cancelled, "timed_out": st.TimedOut} {
		ch <- prometheus.MustNewConstMetric(queueEndsDesc, prometheus.CounterValue, float64(n), outcome)
	}
	for outcome, n := range map[string]uint64{"granted": st.RuleGranted, "refused": st.RuleRefused} {
		ch <- prometheus.MustNewConstMetric(queueRulesDesc, prometheus.CounterValue, float64(n), outcome)
	}
}

// Queue registers the router-owned queue's instruments; the histogram of
// waits is fed by QueueWaited.
func (m *Metrics) Queue(q *queue.Queue) {
	m.reg.MustRegister(queueCollector{q}, m.queueWait)
}

// QueueWaited records a granted request's wait.
func (m *Metrics) QueueWaited(priority int, waited time.Duration) {
	m.queueWait.WithLabelValues(strconv.Itoa(priority)).Observe(waited.Seconds())
}
