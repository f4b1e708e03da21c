package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/diffrouter/diffusion-router/harness/fakeworker"
	"github.com/diffrouter/diffusion-router/harness/freeport"
	"github.com/diffrouter/diffusion-router/procgroup"
	"github.com/diffrouter/diffusion-router/xds/trust"
)

// RoutingConfig is the tail experiment: what a rollout step waits for (its
// slowest requests) under each policy, on a fleet of equal workers and on
// one where half the workers are slower, behind one Envoy or two.
type RoutingConfig struct {
	RouterBin, EnvoyBin string
	Workers             int
	// Fleets are "equal" and/or "mixed" (half the workers SlowFactor
	// times slower).
	Fleets      []string
	SlowFactor  float64
	Replicas    []int
	Policies    []string
	Concurrency int
	NumPrompts  int
	// Warmup requests go first, unmeasured, in every cell: a policy that
	// learns speeds starts each cell cold, like a fresh router.
	Warmup int
	// Task is text-to-image (the default) or text-to-video: video workers
	// (T2V), each request a job created and polled to its end.
	Task      string
	Mix       []Shape
	TimeScale float64
	OutDir    string
	Log       io.Writer
}

// RoutingRow is one cell.
type RoutingRow struct {
	Fleet    string `json:"fleet"`
	Replicas int    `json:"replicas"`
	Policy   string `json:"policy"`
	Report
}

// Validate checks the configuration.
func (rc RoutingConfig) Validate() error {
	switch {
	case rc.Workers < 2:
		return errors.New("at least 2 workers")
	case len(rc.Fleets) == 0 || len(rc.Replicas) == 0 || len(rc.Policies) == 0:
		return errors.New("fleets, replicas and policies must not be empty")
	case rc.SlowFactor < 1:
		return errors.New("slow factor must be at least 1")
	case rc.Concurrency < 1 || rc.NumPrompts < 1 || rc.Warmup < 0:
		return errors.New("concurrency and prompts must be positive, warm-up not negative")
	case rc.Task != "" && rc.Task != "text-to-image" && rc.Task != "text-to-video":
		return fmt.Errorf("task %q: want text-to-image or text-to-video", rc.Task)
	}
	for _, f := range rc.Fleets {
		if f != "equal" && f != "mixed" {
			return fmt.Errorf("fleet %q: want equal or mixed", f)
		}
	}
	for _, r := range rc.Replicas {
		if r < 1 || r > 4 {
			return fmt.Errorf("replicas %d: want 1 to 4", r)
		}
	}
	return nil
}

// PolicyLeastWorkQueue is least-work with the router-owned queue (late
// binding), as a policy of its own in the routing benchmark.
const PolicyLeastWorkQueue = "least-work+queue"

// PolicyArgs are the router flags of a policy as the benchmarks name it:
// "least-work" binds each request on arrival (--queue=false), as before the
// queue; "least-work+queue" is the router's default (the queue, late
// binding); the others are Envoy's policies.
func PolicyArgs(policy string) []string {
	switch policy {
	case PolicyLeastWorkQueue:
		return []string{"--routing-algorithm", "least-work", "--queue"}
	case "least-work":
		return []string{"--routing-algorithm", "least-work", "--queue=false"}
	}
	return []string{"--routing-algorithm", policy}
}

// RunRouting runs every cell: fleets x replicas x policies, the same
// request sequence in each.
func RunRouting(ctx context.Context, rc RoutingConfig) ([]RoutingRow, error) {
	if err := rc.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(rc.OutDir, "runs"), 0o755); err != nil {
		return nil, err
	}
	logf := func(format string, a ...any) {
		if rc.Log != nil {
			fmt.Fprintf(rc.Log, format+"\n", a...)
		}
	}
	var rows []RoutingRow
	for _, fleet := range rc.Fleets {
		urls, stop, err := routingFleet(rc, fleet)
		if err != nil {
			return rows, err
		}
		for _, replicas := range rc.Replicas {
			for _, policy := range rc.Policies {
				row, err := routingCell(ctx, rc, urls, fleet, replicas, policy)
				if err != nil {
					stop()
					return rows, fmt.Errorf("%s fleet, %d replicas, %s: %w", fleet, replicas, policy, err)
				}
				rows = append(rows, row)
				logf("fleet=%-5s replicas=%d policy=%-13s mean=%.3fs p50=%.3fs p99=%.3fs max=%.3fs failed=%d",
					fleet, replicas, policy, row.LatencyMean, row.LatencyP50, row.LatencyP99, row.LatencyMax, row.FailedRequests)
				if err := writeJSON(filepath.Join(rc.OutDir, "runs", fmt.Sprintf("%s-r%d-%s.json", fleet, replicas, policy)), row); err != nil {
					stop()
					return rows, err
				}
			}
		}
		stop()
	}
	return rows, nil
}

// routingFleet starts the workers: all at TimeScale, or (mixed) the second
// half SlowFactor times slower.
func routingFleet(rc RoutingConfig, fleet string) ([]string, func(), error) {
	cfg := fakeworker.DefaultConfig()
	cfg.TimeScale, cfg.Jitter = rc.TimeScale, 0.05
	if rc.Task == "text-to-video" {
		cfg.TaskType = "T2V"
	}
	fast := rc.Workers
	if fleet == "mixed" {
		fast = rc.Workers / 2
	}
	urls, stopFast, err := Workers(fast, cfg)
	if err != nil || fast == rc.Workers {
		return urls, stopFast, err
	}
	cfg.TimeScale = rc.TimeScale * rc.SlowFactor
	slow, stopSlow, err := Workers(rc.Workers-fast, cfg)
	if err != nil {
		stopFast()
		return nil, nil, err
	}
	return append(urls, slow...), func() { stopFast(); stopSlow() }, nil
}

func routingCell(ctx context.Context, rc RoutingConfig, urls []string, fleet string, replicas int, policy string) (RoutingRow, error) {
	state, err := os.MkdirTemp("", "bench-routing-")
	if err != nil {
		return RoutingRow{}, err
	}
	defer os.RemoveAll(state)
	xdsPort, err := freeport.Pick("127.0.0.1")
	if err != nil {
		return RoutingRow{}, err
	}
	args := append(PolicyArgs(policy), "--state-dir", state, "--xds-port", strconv.Itoa(xdsPort))
	r, err := StartRouter(rc.RouterBin, nil, append(append(args, "--worker-urls"), urls...)...)
	if err != nil {
		return RoutingRow{}, err
	}
	defer r.Stop()
	for i := 2; i <= replicas; i++ {
		stop, err := startReplica(ctx, rc.RouterBin, rc.EnvoyBin, fmt.Sprintf("127.0.0.1:%d", xdsPort),
			filepath.Join(state, "xds-tls"), fmt.Sprintf("bench-replica-%d", i), len(urls))
		if err != nil {
			return RoutingRow{}, fmt.Errorf("replica %d: %w", i, err)
		}
		defer stop()
	}
	task := rc.Task
	if task == "" {
		task = "text-to-image"
	}
	base := Config{Targets: []string{r.Front}, Task: task, MaxConcurrency: rc.Concurrency, Mix: rc.Mix}
	if rc.Warmup > 0 {
		warm := base
		warm.NumPrompts, warm.Seed = rc.Warmup, 7
		if _, _, err := Run(ctx, warm); err != nil {
			return RoutingRow{}, fmt.Errorf("warm-up: %w", err)
		}
	}
	run := base
	run.NumPrompts, run.Seed = rc.NumPrompts, 42
	results, dur, err := Run(ctx, run)
	if err != nil {
		return RoutingRow{}, err
	}
	return RoutingRow{Fleet: fleet, Replicas: replicas, Policy: policy, Report: Summarize(results, dur)}, nil
}

// startReplica runs one more Envoy on the router's control plane. It binds
// the same front port (Envoy listens with SO_REUSEPORT), so the kernel
// spreads the client's connections over the replicas. It returns once the
// replica sees every worker healthy.
func startReplica(ctx context.Context, routerBin, envoyBin, xds, tlsDir, name string, workers int) (func(), error) {
	admin, err := freeport.Pick("127.0.0.1")
	if err != nil {
		return nil, err
	}
	bs, err := exec.CommandContext(ctx, routerBin, "bootstrap", "--xds", xds, "--admin-port", strconv.Itoa(admin),
		"--node-id", name, "--xds-tls-dir", tlsDir).Output()
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	path := filepath.Join(tlsDir, "..", name+".yaml")
	if err := os.WriteFile(path, bs, 0o644); err != nil {
		return nil, err
	}
	secret, err := trust.JobSecret(tlsDir)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(envoyBin, "-c", path, "--disable-hot-restart", "--log-level", "warn")
	cmd.Env = append(os.Environ(), trust.JobSecretEnv+"="+secret)
	g, err := procgroup.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("start envoy: %w", err)
	}
	stop := func() { g.Stop(10 * time.Second) }
	deadline := time.Now().Add(60 * time.Second)
	for {
		if healthyHosts(fmt.Sprintf("http://127.0.0.1:%d", admin)) >= workers {
			return stop, nil
		}
		select {
		case <-g.Done():
			return nil, fmt.Errorf("envoy exited: %w", g.Err())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, errors.New("replica did not see the workers healthy within 60 s")
		}
	}
}

// healthyHosts counts the workers cluster's healthy hosts on an Envoy.
func healthyHosts(admin string) int {
	resp, err := http.Get(admin + "/clusters")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "workers::") && strings.HasSuffix(line, "::health_flags::healthy") {
			n++
		}
	}
	return n
}

// RoutingMarkdown is the side-by-side table, with each policy's p99 and
// mean against least-request's in the same fleet and replica count, and the
// share of the single-Envoy p99 gain least-work keeps with more replicas.
func RoutingMarkdown(rows []RoutingRow) string {
	find := func(fleet string, replicas int, policy string) *RoutingRow {
		for i := range rows {
			if r := &rows[i]; r.Fleet == fleet && r.Replicas == replicas && r.Policy == policy {
				return r
			}
		}
		return nil
	}
	var b strings.Builder
	b.WriteString("| fleet | Envoys | policy | completed | failed | mean s | p50 s | p99 s | max s | p99 vs least-request | mean vs least-request |\n")
	b.WriteString("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range rows {
		p99, mean := "", ""
		if lr := find(r.Fleet, r.Replicas, "least-request"); lr != nil && r.Policy != "least-request" && lr.LatencyP99 > 0 {
			p99 = fmt.Sprintf("x%.2f", r.LatencyP99/lr.LatencyP99)
			mean = fmt.Sprintf("x%.2f", r.LatencyMean/lr.LatencyMean)
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %d | %d | %.3f | %.3f | %.3f | %.3f | %s | %s |\n", r.Fleet, r.Replicas, r.Policy,
			r.CompletedRequests, r.FailedRequests, r.LatencyMean, r.LatencyP50, r.LatencyP99, r.LatencyMax, p99, mean)
	}
	for _, fleet := range []string{"equal", "mixed"} {
		lr1, lw1 := find(fleet, 1, "least-request"), find(fleet, 1, "least-work")
		if lr1 == nil || lw1 == nil || lr1.LatencyP99 <= 0 {
			continue
		}
		gain1 := 1 - lw1.LatencyP99/lr1.LatencyP99
		for _, n := range []int{2, 3, 4} {
			lr, lw := find(fleet, n, "least-request"), find(fleet, n, "least-work")
			if lr == nil || lw == nil || lr.LatencyP99 <= 0 {
				continue
			}
			gain := 1 - lw.LatencyP99/lr.LatencyP99
			kept := "n/a (no single-Envoy gain)"
			if gain1 > 0 {
				kept = fmt.Sprintf("%.0f %%", 100*gain/gain1)
			}
			fmt.Fprintf(&b, "\n%s fleet: least-work's p99 gain over least-request is %.0f %% with 1 Envoy and %.0f %% with %d; %d Envoys keep %s of it.\n",
				fleet, 100*gain1, 100*gain, n, n, kept)
		}
	}
	return b.String()
}
