package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/diffrouter/diffusion-router/heldjobs"
)

var (
	heldWaitingDesc = prometheus.NewDesc("diffusion_router_held_jobs_waiting", "Video jobs the router holds that wait for their turn (answered at create, not yet sent to a worker).", nil, nil)
	heldOldestDesc  = prometheus.NewDesc("diffusion_router_held_jobs_oldest_wait_seconds", "How long the oldest waiting held video job has waited.", nil, nil)
	heldBytesDesc   = prometheus.NewDesc("diffusion_router_held_jobs_bytes", "Bytes of waiting held video jobs' bodies on disk (bounded by --max-held-bytes).", nil, nil)
	heldEndsDesc    = prometheus.NewDesc("diffusion_router_held_jobs_total", "Held video jobs by what became of them: taken (create answered by the router), sent (a worker took it), resent (sent again after a crash while sending: it may have run twice), failed (never ran), deleted (deleted while waiting; no worker saw it).", []string{"outcome"}, nil)
)

// heldCollector reads the held jobs at scrape time.
type heldCollector struct{ h *heldjobs.Holder }

func (c heldCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- heldWaitingDesc
	ch <- heldOldestDesc
	ch <- heldBytesDesc
	ch <- heldEndsDesc
}

func (c heldCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.h.Status()
	ch <- prometheus.MustNewConstMetric(heldWaitingDesc, prometheus.GaugeValue, float64(st.Waiting))
	ch <- prometheus.MustNewConstMetric(heldOldestDesc, prometheus.GaugeValue, st.OldestWaitSeconds)
	ch <- prometheus.MustNewConstMetric(heldBytesDesc, prometheus.GaugeValue, float64(st.Bytes))
	for outcome, n := range map[string]uint64{"taken": st.Taken, "sent": st.Sent, "resent": st.Resent, "failed": st.Failed, "deleted": st.Deleted} {
		ch <- prometheus.MustNewConstMetric(heldEndsDesc, prometheus.CounterValue, float64(n), outcome)
	}
}

// Held registers the held video jobs' instruments.
func (m *Metrics) Held(h *heldjobs.Holder) {
	m.reg.MustRegister(heldCollector{h})
}
