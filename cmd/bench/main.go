// Command bench loads a diffusion router (or workers directly) the way
// sglang's bench_serving.py does, and runs the router's experiments:
//
//	bench [run] --base-url URL --num-prompts N --max-concurrency C ...
//	bench grid     workers x concurrency x policy, with plots
//	bench overhead the router's own cost against a direct call and a Go proxy
//	bench scale    fleets of 64, 256 and 1024 workers
//	bench routing  the tail under each policy: equal and mixed-speed fleets, 1 and 2 Envoys
//	bench queue    the router-owned queue against binding at arrival
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/diffrouter/diffusion-router/harness/bench"
)

const defaultMix = "6:512x512:8,3:1024x1024:28,1:1024x1024:50"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	args := os.Args[1:]
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = runCmd(ctx, args)
	case "grid":
		err = gridCmd(ctx, args)
	case "overhead":
		err = overheadCmd(ctx, args)
	case "scale":
		err = scaleCmd(ctx, args)
	case "routing":
		err = routingCmd(ctx, args)
	case "queue":
		err = queueCmd(ctx, args)
	default:
		err = fmt.Errorf("unknown command %q (run, grid, overhead, scale, routing, queue)", cmd)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a list of positive integers", s)
		}
		out = append(out, n)
	}
	return out, nil
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func runCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench run", flag.ContinueOnError)
	base := fs.String("base-url", "http://127.0.0.1:30080", "router (or worker) URL; comma separated to spread over several")
	task := fs.String("task", "text-to-image", "text-to-image or text-to-video")
	n := fs.Int("num-prompts", 1000, "requests to send")
	conc := fs.Int("max-concurrency", 0, "requests in flight at most (closed loop without --request-rate)")
	rate := fs.String("request-rate", "inf", "Poisson arrivals per second, or inf")
	mixFlag := fs.String("request-mix", defaultMix, "weighted list weight:WxH:steps[:frames],...")
	seed := fs.Uint64("seed", 1, "random seed of the workload")
	timeout := fs.Duration("timeout", 0, "limit per request (0: none)")
	out := fs.String("output-file", "", "write the JSON report here")
	noBar := fs.Bool("disable-tqdm", false, "no progress bar")
	if err := fs.Parse(args); err != nil {
		return err
	}
	mix, err := bench.ParseMix(*mixFlag)
	if err != nil {
		return err
	}
	r := 0.0
	if *rate != "inf" {
		if r, err = strconv.ParseFloat(*rate, 64); err != nil || r <= 0 || math.IsInf(r, 0) {
			return fmt.Errorf("--request-rate %q: want a positive number or inf", *rate)
		}
	}
	c := bench.Config{Targets: strings.Split(*base, ","), Task: *task, NumPrompts: *n, MaxConcurrency: *conc,
		RequestRate: r, Mix: mix, Seed: *seed, Timeout: *timeout}
	if c.MaxConcurrency == 0 && c.RequestRate == 0 {
		c.MaxConcurrency = c.NumPrompts
	}
	if !*noBar && isTerminal(os.Stderr) {
		c.Progress = os.Stderr
	}
	results, dur, err := bench.Run(ctx, c)
	if err != nil {
		return err
	}
	rep := bench.Summarize(results, dur)
	fmt.Printf("============ Serving Benchmark Result ============\n")
	fmt.Printf("%-34s %d\n%-34s %d\n%-34s %.2f\n%-34s %.2f\n", "Successful requests:", rep.CompletedRequests,
		"Failed requests:", rep.FailedRequests, "Benchmark duration (s):", rep.Duration, "Request throughput (req/s):", rep.ThroughputQPS)
	fmt.Printf("%-34s %.3f\n%-34s %.3f\n%-34s %.3f\n%-34s %.3f\n", "Mean latency (s):", rep.LatencyMean,
		"Median latency (s):", rep.LatencyMedian, "P99 latency (s):", rep.LatencyP99, "Max latency (s):", rep.LatencyMax)
	for w, k := range rep.PerWorker {
		fmt.Printf("  %-32s %d\n", w, k)
	}
	if rep.FirstError != "" {
		fmt.Printf("first error: %s\n", rep.FirstError)
	}
	if *out != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		return os.WriteFile(*out, append(b, '\n'), 0o644)
	}
	return nil
}

func outDir(flagValue string) (string, error) {
	dir := flagValue
	if dir == "" {
		dir = filepath.Join("bench-results", time.Now().Format("20060102-150405"))
	}
	return dir, os.MkdirAll(dir, 0o755)
}

func gridCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench grid", flag.ContinueOnError)
	bin := fs.String("router-bin", "bin/diffusion-router", "diffusion-router binary")
	workers := fs.String("workers", "1,2,4,8", "fleet sizes")
	conc := fs.String("concurrency", "1,10,100", "client concurrencies")
	policies := fs.String("policies", "least-request,least-work,round-robin,random", "routing policies")
	baseline := fs.Bool("baseline", true, "also run without a router (the client spreads requests)")
	n := fs.Int("num-prompts", 1000, "requests per cell")
	mixFlag := fs.String("request-mix", defaultMix, "weighted list weight:WxH:steps[:frames],...")
	scale := fs.Float64("time-scale", 0.01, "fake workers' speed relative to an H100")
	out := fs.String("out", "", "output directory (default bench-results/<time>)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	g := bench.GridConfig{RouterBin: *bin, Policies: strings.Split(*policies, ","), Baseline: *baseline, NumPrompts: *n,
		TimeScale: *scale, Log: os.Stderr}
	var err error
	if g.Workers, err = ints(*workers); err != nil {
		return err
	}
	if g.Concurrency, err = ints(*conc); err != nil {
		return err
	}
	if g.Mix, err = bench.ParseMix(*mixFlag); err != nil {
		return err
	}
	if g.OutDir, err = outDir(*out); err != nil {
		return err
	}
	rows, err := bench.RunGrid(ctx, g)
	if err != nil {
		return err
	}
	if err := bench.WriteGrid(rows, g.OutDir); err != nil {
		return err
	}
	fmt.Print(bench.Markdown(rows))
	fmt.Fprintln(os.Stderr, "results in", g.OutDir)
	return nil
}

// routingMix is the workload: three quarters short requests, one
// quarter about nine times longer (at --time-scale 0.14: about 0.55 s
// and 4.9 s).
const routingMix = "3:512x512:12,1:1024x1024:34"

func routingCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench routing", flag.ContinueOnError)
	bin := fs.String("router-bin", "bin/diffusion-router", "diffusion-router binary")
	envoyBin := fs.String("envoy-bin", ".tools/envoy/bin/envoy", "Envoy binary, for the extra replicas")
	workers := fs.Int("workers", 8, "fleet size")
	fleets := fs.String("fleets", "equal,mixed", "equal and/or mixed (half the workers --slow-factor slower)")
	slow := fs.Float64("slow-factor", 2, "how much slower the mixed fleet's slow half is")
	replicas := fs.String("replicas", "1,2", "Envoy replica counts")
	policies := fs.String("policies", "least-request,least-work,round-robin", "routing policies")
	conc := fs.Int("concurrency", 24, "client concurrency (closed loop)")
	n := fs.Int("num-prompts", 600, "measured requests per cell")
	warm := fs.Int("warmup", 40, "unmeasured requests before each cell")
	mixFlag := fs.String("request-mix", routingMix, "weighted list weight:WxH:steps[:frames],...")
	scale := fs.Float64("time-scale", 0.14, "fake workers' speed relative to an H100")
	task := fs.String("task", "text-to-image", "text-to-image, or text-to-video (T2V workers; each request a job polled to its end)")
	out := fs.String("out", "", "output directory (default bench-results/<time>)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rc := bench.RoutingConfig{RouterBin: *bin, EnvoyBin: *envoyBin, Workers: *workers, Fleets: strings.Split(*fleets, ","),
		SlowFactor: *slow, Policies: strings.Split(*policies, ","), Concurrency: *conc, NumPrompts: *n, Warmup: *warm,
		TimeScale: *scale, Task: *task, Log: os.Stderr}
	var err error
	if rc.Replicas, err = ints(*replicas); err != nil {
		return err
	}
	if rc.Mix, err = bench.ParseMix(*mixFlag); err != nil {
		return err
	}
	if rc.OutDir, err = outDir(*out); err != nil {
		return err
	}
	rows, err := bench.RunRouting(ctx, rc)
	if err != nil {
		return err
	}
	md := bench.RoutingMarkdown(rows)
	if err := os.WriteFile(filepath.Join(rc.OutDir, "routing.md"), []byte(md), 0o644); err != nil {
		return err
	}
	if b, err := json.MarshalIndent(rows, "", "  "); err == nil {
		_ = os.WriteFile(filepath.Join(rc.OutDir, "routing.json"), b, 0o644)
	}
	fmt.Print(md)
	fmt.Fprintln(os.Stderr, "results in", rc.OutDir)
	return nil
}

func overheadCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench overhead", flag.ContinueOnError)
	bin := fs.String("router-bin", "bin/diffusion-router", "diffusion-router binary")
	n := fs.Int("requests", 3000, "requests per measurement")
	rate := fs.Float64("rate", 1000, "open-loop request rate")
	workers := fs.Int("workers", 4, "near-instant fake workers")
	routerArgs := fs.String("router-args", "", "extra router flags, space separated (for example --wasm-filter none)")
	out := fs.String("out", "", "output directory (default bench-results/<time>)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	res, err := bench.RunOverhead(ctx, bench.OverheadConfig{RouterBin: *bin, Workers: *workers, Requests: *n, Rate: *rate,
		RouterArgs: strings.Fields(*routerArgs), Log: os.Stdout})
	if err != nil {
		return err
	}
	return writeResult(*out, "overhead.json", res)
}

// writeResult saves an experiment's result as JSON in the output directory.
func writeResult(flagDir, name string, v any) error {
	dir, err := outDir(flagDir)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "results in", dir)
	return os.WriteFile(filepath.Join(dir, name), append(b, '\n'), 0o644)
}

func scaleCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench scale", flag.ContinueOnError)
	bin := fs.String("router-bin", "bin/diffusion-router", "diffusion-router binary")
	sizes := fs.String("sizes", "64,256,1024", "fleet sizes")
	update := fs.Duration("update-time", 2*time.Second, "how long one worker's weight update takes")
	loadSizes := fs.String("load-sizes", "8,100,300,1000", "fleet sizes loaded with each policy in turn (empty: none)")
	policies := fs.String("policies", "least-request,least-work", "policies compared on each loaded fleet")
	service := fs.Duration("service-time", 20*time.Millisecond, "each request's service time on the loaded fleets")
	conc := fs.Int("concurrency", 32, "requests in flight on the loaded fleets")
	requests := fs.Int("requests", 6000, "requests per policy and loaded fleet")
	out := fs.String("out", "", "output directory (default bench-results/<time>)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var res struct {
		ControlPlane []bench.ScaleResult   `json:"control_plane"`
		Throughput   []bench.ThroughputRow `json:"throughput"`
	}
	if *sizes != "" {
		s, err := ints(*sizes)
		if err != nil {
			return err
		}
		if res.ControlPlane, err = bench.RunScale(ctx, bench.ScaleConfig{RouterBin: *bin, Sizes: s, UpdateTime: *update, Log: os.Stdout}); err != nil {
			return err
		}
	}
	if *loadSizes != "" {
		s, err := ints(*loadSizes)
		if err != nil {
			return err
		}
		if *conc < 1 || *requests < 1 || *service <= 0 {
			return fmt.Errorf("--concurrency, --requests and --service-time must be positive")
		}
		res.Throughput, err = bench.RunThroughput(ctx, bench.ThroughputConfig{RouterBin: *bin, Sizes: s,
			Policies: strings.Split(*policies, ","), Service: *service, Concurrency: *conc, Requests: *requests, Log: os.Stdout})
		if err != nil {
			return err
		}
	}
	return writeResult(*out, "scale.json", res)
}

func queueCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench queue", flag.ContinueOnError)
	bin := fs.String("router-bin", "bin/diffusion-router", "diffusion-router binary")
	workers := fs.Int("workers", 4, "fleet size")
	burst := fs.Int("burst", 200, "requests in each burst")
	service := fs.Duration("service-time", 100*time.Millisecond, "each request's service time")
	out := fs.String("out", "", "output directory (default bench-results/<time>)")
	only := fs.String("scenarios", "", "comma-separated scenarios to run (default all: plain, slow-worker, priority, second-tenant, disconnects, drain-update, burst-resources, self-named, videos, videos-slow-worker, max-queued-50)")
	videoJobs := fs.Int("video-jobs", 64, "video creates sent at once in the video scenarios")
	videoTime := fs.Duration("video-time", 2*time.Second, "each video job's time on its worker")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var scenarios []string
	if *only != "" {
		scenarios = strings.Split(*only, ",")
	}
	if *workers < 1 || *burst < 1 || *service <= 0 || *videoJobs < 1 || *videoTime <= 0 {
		return fmt.Errorf("--workers, --burst, --service-time, --video-jobs and --video-time must be positive")
	}
	rows, err := bench.RunQueue(ctx, bench.QueueConfig{RouterBin: *bin, Workers: *workers, Burst: *burst, Service: *service, Scenarios: scenarios,
		VideoJobs: *videoJobs, VideoTime: *videoTime, Log: os.Stdout})
	if err != nil {
		return err
	}
	dir, err := outDir(*out)
	if err != nil {
		return err
	}
	if err := bench.QueuePlot(rows, filepath.Join(dir, "queue-depth.png")); err != nil {
		return err
	}
	return writeResult(dir, "queue.json", rows)
}
