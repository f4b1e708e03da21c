package fakeworker

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Start runs a fake worker inside this process on a free loopback port, for
// demos, benchmarks and tests. stop closes it.
func Start(cfg Config) (url string, stop func(), err error) {
	w, err := New(cfg)
	if err != nil {
		return "", nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("fake worker %s: %w", cfg.WorkerID, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := &http.Server{Handler: w.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go w.Run(ctx)
	go func() { _ = srv.Serve(lis) }()
	return "http://" + lis.Addr().String(), func() { _ = srv.Close(); cancel() }, nil
}
