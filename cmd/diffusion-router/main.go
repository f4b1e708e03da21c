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
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/diffrouter/diffusion-router/envoy"
	"github.com/diffrouter/diffusion-router/router"
	"github.com/diffrouter/diffusion-router/version"
	"github.com/diffrouter/diffusion-router/xds/trust"
)

// subcommands are the helpers for running Envoys apart from the control
// plane (--external-envoy).
var subcommands = map[string]func(args []string) error{
	"bootstrap": printBootstrap,
	"certs":     makeCerts,
}

func main() {
	if len(os.Args) > 1 {
		if sub, ok := subcommands[os.Args[1]]; ok {
			if err := sub(os.Args[2:]); err != nil {
				if errors.Is(err, flag.ErrHelp) {
					return
				}
				fmt.Fprintf(os.Stderr, "diffusion-router %s: %v\n", os.Args[1], err)
				os.Exit(2)
			}
			return
		}
	}
	cfg, err := router.Parse(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "diffusion-router:", err)
		os.Exit(2)
	}
	if cfg.ShowVersion {
		fmt.Println(version.String())
		return
	}
	log := router.NewLogger(cfg.LogLevel)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if cfg.StopWithStdin {
		// The launcher that holds standard input usually reads our output
		// too: once it is gone, a log line must fail (EPIPE), not kill the
		// router with SIGPIPE before it has stopped its Envoy.
		signal.Ignore(syscall.SIGPIPE)
		go func() {
			// Reads end at EOF (the launcher has gone) or an error: either
			// way no one holds the other end any more.
			_, _ = io.Copy(io.Discard, os.Stdin)
			log.Info("standard input closed (--stop-with-stdin): stopping")
			stop()
		}()
	}
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
	tlsDir := fs.String("xds-tls-dir", "", "the control plane's --xds-tls-dir as this Envoy sees it (required: it needs ca.pem and envoy/)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *tlsDir == "" {
		return errors.New("--xds-tls-dir is required: the control plane lets in only Envoys with its certificate")
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
		AdminAdvertise: *advertise, XDSAddress: h, XDSPort: port, TLS: trust.EnvoyFilesIn(*tlsDir)})
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(out)
	return err
}

// makeCerts makes the credentials directory ahead of the control plane, for
// deployments where it and the Envoys run as different users (containers):
// run as root, it gives each side's files to that side's user.
func makeCerts(args []string) error {
	fs := flag.NewFlagSet("diffusion-router certs", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory to make (kept as it is when already complete)")
	envoyOwner := fs.String("envoy-owner", "", "uid:gid to own envoy/ (default: the current user)")
	cpOwner := fs.String("control-plane-owner", "", "uid:gid to own control-plane/ (default: the current user)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || fs.NArg() > 0 {
		return errors.New("usage: diffusion-router certs --dir DIR [--envoy-owner UID:GID] [--control-plane-owner UID:GID]")
	}
	var owners trust.Owners
	var err error
	if owners.Envoy, err = parseOwner(*envoyOwner); err != nil {
		return fmt.Errorf("--envoy-owner: %w", err)
	}
	if owners.ControlPlane, err = parseOwner(*cpOwner); err != nil {
		return fmt.Errorf("--control-plane-owner: %w", err)
	}
	made, err := trust.Ensure(*dir, owners)
	if err != nil {
		return err
	}
	if err := trust.Check(*dir); err != nil {
		return err
	}
	if made {
		fmt.Printf("made xDS credentials in %s: the control plane takes --xds-tls-dir %s; each Envoy needs %s and %s/\n", *dir, *dir, trust.CAFile, trust.EnvoyDir)
	} else {
		fmt.Printf("%s already holds valid xDS credentials; kept\n", *dir)
	}
	return nil
}

func parseOwner(s string) (*trust.Owner, error) {
	if s == "" {
		return nil, nil
	}
	u, g, ok := strings.Cut(s, ":")
	uid, err1 := strconv.Atoi(u)
	gid, err2 := strconv.Atoi(g)
	if !ok || err1 != nil || err2 != nil || uid < 0 || gid < 0 {
		return nil, fmt.Errorf("%q is not UID:GID", s)
	}
	return &trust.Owner{UID: uid, GID: gid}, nil
}
