// Command diffusion-router is the control plane of the diffusion router: the
// registry REST API and the xDS server, and by default a supervised local
// Envoy that carries the traffic. Its flags are a superset of the Python
// sglang-diffusion routers'.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/diffrouter/diffusion-router/router"
)

func main() {
	cfg, err := router.Parse(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "diffusion-router:", err)
		os.Exit(2)
	}
	log := router.NewLogger(cfg.LogLevel)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = router.Run(ctx, cfg, log, func(a router.Addresses) {
		if a.Front == "" {
			fmt.Printf("diffusion-router: control plane ready; xDS at %s, registry API at %s\n", a.XDS, a.API)
			return
		}
		fmt.Printf("diffusion-router: ready on http://%s (registry API http://%s, Envoy admin http://%s)\n", a.Front, a.API, a.Admin)
		fmt.Printf("try:\n  curl -s http://%s/health\n  curl -s http://%s/v1/images/generations -H 'Content-Type: application/json' -d '{\"prompt\": \"a red fox in snow\", \"response_format\": \"b64_json\"}'\n", a.Front, a.Front)
	})
	if err != nil {
		log.WithError(err).Error("diffusion-router stopped")
		os.Exit(1)
	}
}
