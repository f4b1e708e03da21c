// Package workerword reads each worker's own word about its work: the
// scheduler gauges sglang-diffusion serves on /metrics when started with
// --enable-metrics (requests queued and running), and, for video workers,
// its job list (which jobs ended, and how long each took on the GPU). The
// control plane passes both to the filters (package loadboard), which
// correct their own accounting with them: work another client sent
// counts, and a job the worker finished stops counting whether or not a
// client polls it. A worker that serves neither changes nothing.
package workerword

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// The gauges' names, as sglang-diffusion's DiffusionMetricsCollector
// defines them.
const (
	MetricQueued  = "sglang:diffusion_num_queue_reqs"
	MetricRunning = "sglang:diffusion_num_running_reqs"
)

// ParseMetrics reads the two gauges from a Prometheus text exposition,
// summing over label sets (multiprocess exports may carry several). ok is
// false unless both are present.
func ParseMetrics(body []byte) (queued, running int64, ok bool) {
	var seenQ, seenR bool
	var q, r float64
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest := line, ""
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		if name != MetricQueued && name != MetricRunning {
			continue
		}
		if strings.HasPrefix(rest, "{") {
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			rest = rest[end+1:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil || !(v >= 0 && v <= 1e9) { // NaN fails both
			continue
		}
		if name == MetricQueued {
			q, seenQ = q+v, true
		} else {
			r, seenR = r+v, true
		}
	}
	if !seenQ || !seenR {
		return 0, 0, false
	}
	return int64(q + 0.5), int64(r + 0.5), true
}

// Job is one entry of a worker's job list.
type Job struct {
	ID     string   `json:"id"`
	Status string   `json:"status"`
	GPUSec *float64 `json:"inference_time_s"`
}

// Ended reports whether the worker is done with the job.
func (j Job) Ended() bool { return j.Status == "completed" || j.Status == "failed" }

// ParseJobList reads one page of GET /v1/videos.
func ParseJobList(body []byte) ([]Job, error) {
	var page struct {
		Data []Job `json:"data"`
	}
	if err := json.Unmarshal(body, &page); err != nil {
		return nil, fmt.Errorf("job list: %w", err)
	}
	return page.Data, nil
}
