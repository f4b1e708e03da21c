package bench

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/diffrouter/diffusion-router/harness/fakeworker"
)

// NoRouter names the baseline in which the client spreads requests over the
// workers by itself.
const NoRouter = "no-router"

// GridConfig is the Python routers' experiment: fleets of workers x client
// concurrency x routing policy, on a mixed workload.
type GridConfig struct {
	RouterBin   string
	Workers     []int
	Concurrency []int
	Policies    []string
	Baseline    bool
	NumPrompts  int
	Mix         []Shape
	// TimeScale is the fake workers' speed relative to an H100.
	TimeScale float64
	OutDir    string
	Log       io.Writer
}

// Row is one cell of the grid.
type Row struct {
	Policy      string `json:"policy"`
	Workers     int    `json:"workers"`
	Concurrency int    `json:"concurrency"`
	Report
}

// RunGrid runs every cell and writes one JSON report per cell into OutDir.
func RunGrid(ctx context.Context, g GridConfig) ([]Row, error) {
	if err := os.MkdirAll(filepath.Join(g.OutDir, "runs"), 0o755); err != nil {
		return nil, err
	}
	logf := func(format string, a ...any) {
		if g.Log != nil {
			fmt.Fprintf(g.Log, format+"\n", a...)
		}
	}
	var rows []Row
	for _, n := range g.Workers {
		cfg := fakeworker.DefaultConfig()
		cfg.TimeScale, cfg.Jitter = g.TimeScale, 0.05
		urls, stop, err := Workers(n, cfg)
		if err != nil {
			return rows, err
		}
		policies := append([]string(nil), g.Policies...)
		if g.Baseline {
			policies = append(policies, NoRouter)
		}
		for _, policy := range policies {
			targets := urls
			var r *Router
			if policy != NoRouter {
				r, err = StartRouter(g.RouterBin, nil, append(append(PolicyArgs(policy), "--worker-urls"), urls...)...)
				if err != nil {
					stop()
					return rows, fmt.Errorf("%d workers, %s: %w", n, policy, err)
				}
				targets = []string{r.Front}
			}
			for _, c := range g.Concurrency {
				results, dur, err := Run(ctx, Config{Targets: targets, Task: "text-to-image", NumPrompts: g.NumPrompts,
					MaxConcurrency: c, Mix: g.Mix, Seed: uint64(n*1000 + c)})
				if err != nil {
					if r != nil {
						r.Stop()
					}
					stop()
					return rows, err
				}
				row := Row{Policy: policy, Workers: n, Concurrency: c, Report: Summarize(results, dur)}
				rows = append(rows, row)
				logf("workers=%d policy=%-13s concurrency=%-3d qps=%7.1f mean=%.3fs p99=%.3fs failed=%d",
					n, policy, c, row.ThroughputQPS, row.LatencyMean, row.LatencyP99, row.FailedRequests)
				if err := writeJSON(filepath.Join(g.OutDir, "runs", fmt.Sprintf("w%d-%s-c%d.json", n, policy, c)), row); err != nil {
					return rows, err
				}
			}
			if r != nil {
				r.Stop()
			}
		}
		stop()
	}
	return rows, nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// WriteGrid writes grid.json, grid.csv, grid.md and the plots.
func WriteGrid(rows []Row, dir string) error {
	if err := writeJSON(filepath.Join(dir, "grid.json"), rows); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "grid.csv"))
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"policy", "workers", "concurrency", "completed_requests", "failed_requests", "duration",
		"throughput_qps", "latency_mean", "latency_median", "latency_p50", "latency_p90", "latency_p99", "latency_max"})
	ff := func(v float64) string { return strconv.FormatFloat(v, 'f', 4, 64) }
	for _, r := range rows {
		_ = w.Write([]string{r.Policy, strconv.Itoa(r.Workers), strconv.Itoa(r.Concurrency), strconv.Itoa(r.CompletedRequests),
			strconv.Itoa(r.FailedRequests), ff(r.Duration), ff(r.ThroughputQPS), ff(r.LatencyMean), ff(r.LatencyMedian),
			ff(r.LatencyP50), ff(r.LatencyP90), ff(r.LatencyP99), ff(r.LatencyMax)})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "grid.md"), []byte(Markdown(rows)), 0o644); err != nil {
		return err
	}
	return Plots(rows, dir)
}

// Markdown renders the grid as a table, with least-request's p99 relative
// to round-robin's where both ran.
func Markdown(rows []Row) string {
	p99 := map[string]float64{}
	for _, r := range rows {
		p99[fmt.Sprintf("%s/%d/%d", r.Policy, r.Workers, r.Concurrency)] = r.LatencyP99
	}
	var b strings.Builder
	b.WriteString("| workers | concurrency | policy | completed | failed | qps | mean s | p50 s | p99 s | p99 vs round-robin |\n")
	b.WriteString("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	sorted := append([]Row(nil), rows...)
	sort.SliceStable(sorted, func(i, j int) bool {
		a, c := sorted[i], sorted[j]
		if a.Workers != c.Workers {
			return a.Workers < c.Workers
		}
		return a.Concurrency < c.Concurrency
	})
	for _, r := range sorted {
		ratio := ""
		if rr := p99[fmt.Sprintf("round-robin/%d/%d", r.Workers, r.Concurrency)]; rr > 0 && r.Policy != "round-robin" {
			ratio = fmt.Sprintf("%.2f", r.LatencyP99/rr)
		}
		fmt.Fprintf(&b, "| %d | %d | %s | %d | %d | %.1f | %.3f | %.3f | %.3f | %s |\n", r.Workers, r.Concurrency, r.Policy,
			r.CompletedRequests, r.FailedRequests, r.ThroughputQPS, r.LatencyMean, r.LatencyP50, r.LatencyP99, ratio)
	}
	return b.String()
}
