package e2e

import (
	"encoding/json"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestBenchGridSmoke runs a small grid (one cell per policy plus the
// no-router baseline) and checks that every output is produced and that the
// numbers are consistent with each other.
func TestBenchGridSmoke(t *testing.T) {
	t.Parallel()
	out := t.TempDir()
	const prompts = 150
	cmd := exec.Command(filepath.Join(binDir, "bench"), "grid", "--router-bin", filepath.Join(binDir, "diffusion-router"),
		"--workers", "2", "--concurrency", "8", "--num-prompts", "150", "--out", out)
	cmd.Env = append(os.Environ(), "ENVOY_BIN="+envoyBin)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bench grid: %v\n%s", err, b)
	}
	for _, f := range []string{"grid.csv", "grid.md"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Fatalf("%s missing or empty: %v", f, err)
		}
	}
	for _, f := range []string{"throughput.png", "p99.png", "per-worker.png"} {
		fh, err := os.Open(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := png.DecodeConfig(fh)
		fh.Close()
		if err != nil || cfg.Width < 100 {
			t.Fatalf("%s is not a PNG plot: %v", f, err)
		}
	}
	var rows []struct {
		Policy        string         `json:"policy"`
		Completed     int            `json:"completed_requests"`
		Failed        int            `json:"failed_requests"`
		ThroughputQPS float64        `json:"throughput_qps"`
		LatencyP50    float64        `json:"latency_p50"`
		LatencyP99    float64        `json:"latency_p99"`
		PerWorker     map[string]int `json:"per_worker_requests"`
	}
	readJSONFile(t, filepath.Join(out, "grid.json"), &rows)
	policies := map[string]bool{}
	for _, r := range rows {
		policies[r.Policy] = true
		if r.Completed+r.Failed != prompts || r.Failed != 0 {
			t.Errorf("%s: completed %d + failed %d != %d sent", r.Policy, r.Completed, r.Failed, prompts)
		}
		sum := 0
		for _, n := range r.PerWorker {
			sum += n
		}
		if sum != r.Completed || len(r.PerWorker) != 2 {
			t.Errorf("%s: per-worker counts %v do not add up to %d over 2 workers", r.Policy, r.PerWorker, r.Completed)
		}
		if r.ThroughputQPS <= 0 || r.LatencyP99 < r.LatencyP50 {
			t.Errorf("%s: inconsistent stats qps %v p50 %v p99 %v", r.Policy, r.ThroughputQPS, r.LatencyP50, r.LatencyP99)
		}
	}
	for _, p := range []string{"least-request", "least-work", "round-robin", "random", "no-router"} {
		if !policies[p] {
			t.Errorf("no row for %s", p)
		}
	}
	runs, _ := filepath.Glob(filepath.Join(out, "runs", "*.json"))
	if len(runs) != len(rows) {
		t.Errorf("%d per-run files for %d rows", len(runs), len(rows))
	}
	md, _ := os.ReadFile(filepath.Join(out, "grid.md"))
	if strings.Count(string(md), "\n") != len(rows)+2 {
		t.Errorf("markdown table has the wrong number of lines:\n%s", md)
	}
}

// TestBenchRoutingSmoke runs the tail experiment small: a mixed fleet,
// one and two Envoys, least-request and least-work, and checks the table
// and the numbers agree.
func TestBenchRoutingSmoke(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, fleet, md string
		args            []string
		prompts, rows   int
	}{
		{"images", "mixed", "| mixed | 2 | least-work |", []string{"--fleets", "mixed", "--replicas", "1,2"}, 60, 4},
		// Video jobs: each request a job created and polled to its end.
		{"videos", "equal", "| equal | 1 | least-work |", []string{"--task", "text-to-video", "--fleets", "equal", "--replicas", "1",
			"--request-mix", "3:256x256:4:8,1:256x256:8:16"}, 24, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := t.TempDir()
			args := append([]string{"routing", "--router-bin", filepath.Join(binDir, "diffusion-router"),
				"--envoy-bin", envoyBin, "--workers", "2", "--policies", "least-request,least-work",
				"--concurrency", "4", "--warmup", "8", "--time-scale", "0.01", "--num-prompts", strconv.Itoa(c.prompts), "--out", out}, c.args...)
			cmd := exec.Command(filepath.Join(binDir, "bench"), args...)
			cmd.Env = append(os.Environ(), "ENVOY_BIN="+envoyBin)
			b, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("bench routing: %v\n%s", err, b)
			}
			var rows []struct {
				Fleet     string  `json:"fleet"`
				Replicas  int     `json:"replicas"`
				Policy    string  `json:"policy"`
				Completed int     `json:"completed_requests"`
				Failed    int     `json:"failed_requests"`
				P50       float64 `json:"latency_p50"`
				P99       float64 `json:"latency_p99"`
			}
			readJSONFile(t, filepath.Join(out, "routing.json"), &rows)
			if len(rows) != c.rows {
				t.Fatalf("%d rows, want %d (replica counts x 2 policies)", len(rows), c.rows)
			}
			for _, r := range rows {
				if r.Fleet != c.fleet || r.Completed != c.prompts || r.Failed != 0 || r.P99 < r.P50 || r.P50 <= 0 {
					t.Errorf("inconsistent row %+v", r)
				}
			}
			md, err := os.ReadFile(filepath.Join(out, "routing.md"))
			if err != nil || !strings.Contains(string(md), c.md) {
				t.Fatalf("routing.md lacks the row %q:\n%s", c.md, md)
			}
			if c.rows == 4 && !strings.Contains(string(md), "keep") {
				t.Fatalf("routing.md lacks the kept-gain line:\n%s", md)
			}
		})
	}
}

// readJSONFile decodes the JSON file at path into v.
func readJSONFile(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
