package router

import (
	"context"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/fakeworker"
)

// startDemoWorkers runs n fake sglang-diffusion workers inside this process
// on free loopback ports, for trying the router without GPUs. The last one
// generates videos, the others images. They stop with ctx.
func startDemoWorkers(ctx context.Context, n int, timeScale float64, log *logrus.Entry) ([]string, error) {
	var urls []string
	for i := range n {
		cfg := fakeworker.DefaultConfig()
		cfg.WorkerID = fmt.Sprintf("demo-worker-%d", i+1)
		cfg.TimeScale = timeScale
		cfg.UpdateTime = 5 * time.Second
		if n > 1 && i == n-1 {
			cfg.TaskType, cfg.ModelPath = "T2V", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
		}
		url, stop, err := fakeworker.Start(cfg)
		if err != nil {
			return nil, fmt.Errorf("demo worker: %w", err)
		}
		context.AfterFunc(ctx, stop)
		log.WithFields(logrus.Fields{"worker": url, "id": cfg.WorkerID, "task_type": cfg.TaskType}).Info("demo worker started")
		urls = append(urls, url)
	}
	return urls, nil
}
