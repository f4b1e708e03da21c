// Command fake-worker is a stand-in for an sglang-diffusion server, for tests,
// demos and benchmarks of the router. See package fakeworker.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/diffrouter/diffusion-router/harness/fakeworker"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "fake-worker:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cfg := fakeworker.DefaultConfig()
	fs := flag.NewFlagSet("fake-worker", flag.ContinueOnError)
	host := fs.String("host", "127.0.0.1", "address to listen on")
	port := fs.Int("port", 0, "port to listen on (0: a free port, printed on start)")
	fs.StringVar(&cfg.WorkerID, "worker-id", "", "name in every response (default fake-worker-PORT)")
	fs.StringVar(&cfg.ModelPath, "model-path", cfg.ModelPath, "model the worker claims to serve")
	extraIDs := fs.String("extra-model-ids", "", "comma-separated ids /v1/models lists beside --model-path")
	fs.StringVar(&cfg.ServedName, "served-model-name", "", "id /v1/models lists instead of --model-path (sglang's served model name)")
	fs.StringVar(&cfg.TaskType, "task-type", cfg.TaskType, "T2I, I2I, TI2I, T2V, I2V or TI2V")
	fs.DurationVar(&cfg.Base, "base", cfg.Base, "fixed cost per request (text encode + VAE decode), unscaled")
	fs.DurationVar(&cfg.PerStep, "per-step", cfg.PerStep, "cost of one denoising step at 1024x1024, unscaled")
	fs.IntVar(&cfg.DefaultSteps, "steps", cfg.DefaultSteps, "default num_inference_steps")
	fs.IntVar(&cfg.DefaultSize, "size", cfg.DefaultSize, "default width and height")
	fs.IntVar(&cfg.VideoFrames, "frames", cfg.VideoFrames, "default frames of a video")
	fs.Float64Var(&cfg.Jitter, "jitter", cfg.Jitter, "relative service-time jitter, uniform in +/-")
	fs.Float64Var(&cfg.TimeScale, "time-scale", cfg.TimeScale, "multiplies every service time (0.001: milliseconds for seconds)")
	fs.DurationVar(&cfg.UpdateTime, "update-time", cfg.UpdateTime, "time update_weights_from_disk blocks the queue, unscaled")
	fs.Float64Var(&cfg.FailRate, "fail-rate", 0, "fraction of generations that answer 500")
	fs.Float64Var(&cfg.HangRate, "hang-rate", 0, "fraction of generations that never answer")
	fs.IntVar(&cfg.StreamChunkBytes, "stream-chunk-bytes", 0, "stream generation answers chunked, without Content-Length, in pieces of this size (0: one write)")
	fs.DurationVar(&cfg.StartupDelay, "startup-delay", 0, "wait before opening the port")
	fs.DurationVar(&cfg.Warmup, "warmup", 0, "after the port opens, generations wait this long (health answers at once)")
	fs.Int64Var(&cfg.Seed, "seed", 0, "random seed (0: from the clock)")
	fs.BoolVar(&cfg.NoMetrics, "no-metrics", false, "serve no /metrics (as sglang-diffusion without --enable-metrics)")
	fs.BoolVar(&cfg.NoJobList, "no-job-list", false, "serve no video job list (GET /v1/videos answers 405): jobs are known one by one")
	register := fs.String("register-with", "", "router (or registry API) URL to announce this worker to with POST /add_worker (demos)")
	advertise := fs.String("advertise", "", "this worker's URL as the router reaches it (with --register-with)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *extraIDs != "" {
		cfg.ExtraModelIDs = strings.Split(*extraIDs, ",")
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if *port < 0 || *port > 65535 {
		return fmt.Errorf("--port %d out of range", *port)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if cfg.StartupDelay > 0 {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(cfg.StartupDelay):
		}
	}
	lis, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	actual := lis.Addr().(*net.TCPAddr).Port
	if cfg.WorkerID == "" {
		cfg.WorkerID = "fake-worker-" + strconv.Itoa(actual)
	}
	srv, err := fakeworker.New(cfg)
	if err != nil {
		return err
	}
	go srv.Run(ctx)
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(shutdown)
	}()
	if *register != "" {
		go announce(ctx, *register, *advertise)
	}
	// Tests and scripts read this line to learn the port.
	fmt.Printf("fake-worker %s listening on http://%s\n", cfg.WorkerID, net.JoinHostPort(*host, strconv.Itoa(actual)))
	if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// announce registers the worker with a router, retrying until the router
// answers: in a compose demo the router may start after the worker.
func announce(ctx context.Context, router, self string) {
	body := fmt.Sprintf(`{"url": %q}`, self)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(router, "/")+"/add_worker", strings.NewReader(body))
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake-worker: register:", err)
			return
		}
		req.Header.Set("Content-Type", "application/json")
		if tok := os.Getenv("DIFFUSION_ROUTER_ADMIN_TOKEN"); tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusCreated {
				fmt.Println("fake-worker: registered with", router)
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}
