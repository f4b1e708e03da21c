// Package workerword reads each worker's own word about its work. Each
// source is a document fetched from the worker: its Prometheus metrics
// (sglang-diffusion serves them with --enable-metrics; metrics.go) and,
// for video workers, its job list (joblist.go: which jobs ended, and how
// long each took on the GPU). From the metrics, extractors read signals
// into a Word, one field each (scheduler.go: requests queued and
// running). The control plane passes the word to the filters (package
// loadboard), which correct their own accounting with it: work another
// client sent counts, and a job the worker finished stops counting
// whether or not a client polls it. A worker that serves neither changes
// nothing.
package workerword

import (
	"bytes"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Word is what a worker says of its own work at one reading: one field a
// signal, each filled by its extractor; nil: the worker did not say.
type Word struct {
	At time.Time
	// Scheduler is its generations queued and running (scheduler.go).
	Scheduler *Scheduler
}

// An extractor reads one signal from a worker's metrics into its field of
// w; it reports whether the metrics carried the signal.
type extractor func(families map[string]*dto.MetricFamily, w *Word) bool

// extractors are the signals read from the metrics: a new one is a file
// with its extractor, its field in Word, and its line here.
func extractors() []extractor { return []extractor{scheduler} }

// ParseMetrics reads a worker's metrics (Prometheus text exposition) into
// a Word; ok is false when they carry no signal. What the parser read
// before a malformed line counts.
func ParseMetrics(body []byte) (Word, bool) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, _ := p.TextToMetricFamilies(bytes.NewReader(body))
	var w Word
	ok := false
	for _, read := range extractors() {
		if read(families, &w) {
			ok = true
		}
	}
	return w, ok
}

// sumGauge sums a gauge (or untyped sample) over its label sets
// (multiprocess exports may carry several), skipping values out of
// [0, 1e9] (NaN too); ok is false when no sample counted.
func sumGauge(families map[string]*dto.MetricFamily, name string) (float64, bool) {
	f := families[name]
	if f == nil {
		return 0, false
	}
	sum, ok := 0.0, false
	for _, m := range f.GetMetric() {
		var v float64
		switch {
		case m.GetGauge() != nil:
			v = m.GetGauge().GetValue()
		case m.GetUntyped() != nil:
			v = m.GetUntyped().GetValue()
		default:
			continue
		}
		if !(v >= 0 && v <= 1e9) { // NaN fails both
			continue
		}
		sum, ok = sum+v, true
	}
	return sum, ok
}
