package router

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/fleet"
	"github.com/diffrouter/diffusion-router/jobid"
	"github.com/diffrouter/diffusion-router/loadboard"
	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/workerword"
)

// Addresses are where a running router can be reached; ports chosen at start
// are filled in.
type Addresses struct {
	Front string // host:port of Envoy's listener ("" with --external-envoy)
	API   string
	XDS   string
	Admin string // local Envoy's admin ("" with --external-envoy)
}

// NewLogger builds the logger from --log-level.
func NewLogger(level string) *logrus.Logger {
	l := logrus.New()
	l.SetOutput(os.Stderr)
	l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: "15:04:05.000"})
	lv, err := parseLogLevel(level)
	if err != nil {
		lv = logrus.InfoLevel // Validate has refused it already
	}
	l.SetLevel(lv)
	return l
}

// parseLogLevel reads --log-level: logrus's names and uvicorn's, which the
// Python routers pass their --log-level to (critical: errors only, as the
// router logs nothing more severe and lives on; trace: everything).
func parseLogLevel(s string) (logrus.Level, error) {
	switch strings.ToLower(s) {
	case "trace":
		return logrus.TraceLevel, nil
	case "debug":
		return logrus.DebugLevel, nil
	case "info":
		return logrus.InfoLevel, nil
	case "warning", "warn":
		return logrus.WarnLevel, nil
	case "error", "critical":
		return logrus.ErrorLevel, nil
	}
	return logrus.InfoLevel, fmt.Errorf("--log-level %q: want critical, error, warning, info, debug or trace", s)
}

func splitHostPort(hp string) (string, uint32, error) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: %w", hp, err)
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return "", 0, fmt.Errorf("address %q: bad port", hp)
	}
	return h, uint32(n), nil
}

// connectHost turns a wildcard listen address into one a client can dial.
func connectHost(h string) string {
	switch h {
	case "0.0.0.0", "":
		return "127.0.0.1"
	case "::":
		return "::1"
	}
	return h
}

// admitInitial registers --worker-urls in parallel; one that cannot be
// admitted is logged, not fatal, so a router can start before its workers.
func admitInitial(ctx context.Context, fl *fleet.Manager, urls []string, log *logrus.Entry) {
	var wg sync.WaitGroup
	for _, u := range urls {
		// A worker the store already holds keeps its state: a restart
		// must not re-admit one that was quarantined.
		if wu, err := registry.ParseWorkerURL(u); err == nil {
			if _, known := fl.Registry().Get(wu.String()); known {
				continue
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := fl.Admit(ctx, u); err != nil {
				log.WithError(err).WithField("worker", u).Error("cannot add worker from --worker-urls")
			}
		}()
	}
	wg.Wait()
}

// listenAvoiding listens on host:port; for port 0 (any free port) it never
// takes one of the avoided ports, which another process (Envoy) is about to
// bind.
func listenAvoiding(host string, port int, avoid []int) (net.Listener, error) {
	return listenAvoidingWith(net.Listen, host, port, avoid)
}

func listenAvoidingWith(listen func(network, addr string) (net.Listener, error), host string, port int, avoid []int) (net.Listener, error) {
	if port != 0 {
		return listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	}
	var held []net.Listener // avoided ports stay taken until a good one is found
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for range 16 {
		l, err := listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, err
		}
		if !slices.Contains(avoid, l.Addr().(*net.TCPAddr).Port) {
			return l, nil
		}
		held = append(held, l)
	}
	return nil, fmt.Errorf("listen on %s: the system kept handing out reserved ports %v", host, avoid)
}

// freePort picks a free port for another process (Envoy's admin), never
// one of avoid.
func freePort(host string, avoid ...int) (int, error) {
	l, err := listenAvoiding(host, 0, avoid)
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// wordTargets are the workers whose own word is read: those Envoy routes
// to or drains.
func wordTargets(s registry.Snapshot) []workerword.Target {
	var out []workerword.Target
	for _, w := range s.Workers {
		if w.InEnvoy() {
			out = append(out, workerword.Target{Addr: loadboard.Addr(w), URL: w.URL.String(), Video: w.Caps.Video(), Key: jobid.WorkerKey(w.Key())})
		}
	}
	return out
}
