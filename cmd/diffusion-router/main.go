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
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/diffrouter/diffusion-router/envoy"
	"github.com/diffrouter/diffusion-router/router"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "bootstrap" {
		if err := printBootstrap(os.Args[2:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return
			}
			fmt.Fprintln(os.Stderr, "diffusion-router bootstrap:", err)
			os.Exit(2)
		}
		return
	}
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

// printBootstrap writes the bootstrap of an Envoy that takes its
// configuration from a control plane started with --external-envoy.
func printBootstrap(args []string) error {
	fs := flag.NewFlagSet("diffusion-router bootstrap", flag.ContinueOnError)
	xds := fs.String("xds", "", "host:port of the control plane's xDS server (required)")
	adminAddr := fs.String("admin-address", "127.0.0.1", "address of this Envoy's admin interface")
	adminPort := fs.Int("admin-port", 9901, "port of this Envoy's admin interface")
	advertise := fs.String("admin-advertise", "", "host:port at which the control plane reaches this admin interface (default address:port)")
	host, _ := os.Hostname()
	nodeID := fs.String("node-id", fmt.Sprintf("envoy-%s-%d", host, os.Getpid()), "this Envoy's node id (unique per replica)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	h, p, err := net.SplitHostPort(*xds)
	if err != nil {
		return fmt.Errorf("--xds %q: %w", *xds, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return fmt.Errorf("--xds %q: bad port", *xds)
	}
	out, err := envoy.Render(envoy.Bootstrap{NodeID: *nodeID, AdminAddress: *adminAddr, AdminPort: *adminPort,
		AdminAdvertise: *advertise, XDSAddress: h, XDSPort: port})
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(out)
	return err
}
