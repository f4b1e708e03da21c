package router

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/envoy"
	"github.com/diffrouter/diffusion-router/envoyadmin"
	"github.com/diffrouter/diffusion-router/portowner"
	"github.com/diffrouter/diffusion-router/xds/trust"
)

// localEnvoyFile records the local Envoy's ports next to its bootstrap, for
// a control plane that restarts on the same state directory.
const localEnvoyFile = "envoy.json"

// runningEnvoy is a local Envoy left by a previous control plane.
type runningEnvoy struct {
	PID       int `json:"-"`
	AdminPort int `json:"admin_port"`
	XDSPort   int `json:"xds_port"`
}

// findLocalEnvoy looks in the state directory for an Envoy that a previous
// control plane (killed, not stopped) left running, and that this one can
// take over: same admin and xDS ports as asked (or any, when free ports
// were asked for).
func findLocalEnvoy(c Config, stateDir string, log *logrus.Entry) runningEnvoy {
	if c.ExternalEnvoy {
		return runningEnvoy{}
	}
	pid, ok := envoy.FindRunning(filepath.Join(stateDir, "envoy.pid"), filepath.Join(stateDir, "envoy-bootstrap.yaml"))
	if !ok {
		return runningEnvoy{}
	}
	var re runningEnvoy
	b, err := os.ReadFile(filepath.Join(stateDir, localEnvoyFile))
	if err == nil {
		err = json.Unmarshal(b, &re)
	}
	switch {
	case err != nil || re.XDSPort == 0 || re.AdminPort == 0:
		log.WithError(err).WithField("pid", pid).Warn("an Envoy is running on this state directory, but its ports are unknown; not taking it over")
		return runningEnvoy{}
	case (c.XDSPort != 0 && c.XDSPort != re.XDSPort) || (c.AdminPort != 0 && c.AdminPort != re.AdminPort):
		log.WithField("pid", pid).Warn("an Envoy is running on this state directory with other ports than asked; not taking it over")
		return runningEnvoy{}
	}
	re.PID = pid
	return re
}

// localEnvoy prepares the supervised Envoy: binary, admin port, bootstrap;
// or, to adopt a running one, the same.
func localEnvoy(c Config, stateDir, tlsDir, xdsAddr string, adopt runningEnvoy, log *logrus.Logger) (*envoy.Supervisor, string, error) {
	bin, err := envoy.FindBinary(c.EnvoyBin)
	if err != nil {
		return nil, "", err
	}
	secret, err := trust.JobSecret(tlsDir)
	if err != nil {
		return nil, "", err
	}
	path := filepath.Join(stateDir, "envoy-bootstrap.yaml")
	level := c.EnvoyLogLevel
	if level == "warning" {
		level = "warn"
	}
	sup := &envoy.Supervisor{
		Bin: bin, ConfigPath: path, LogLevel: level, Concurrency: c.EnvoyConcurrency,
		PIDFile: filepath.Join(stateDir, "envoy.pid"), Log: log.WithField("component", "supervisor"),
		Env: []string{trust.JobSecretEnv + "=" + secret},
	}
	if adopt.PID > 0 {
		// Its bootstrap stays as it is: it names this control plane's
		// xDS port, which was taken over.
		sup.Adopt = adopt.PID
		return sup, net.JoinHostPort(c.AdminHost, strconv.Itoa(adopt.AdminPort)), nil
	}
	adminPort := c.AdminPort
	if adminPort == 0 {
		if adminPort, err = freePort(c.AdminHost, c.Port); err != nil { // never the front port Envoy binds too
			return nil, "", fmt.Errorf("choose an admin port: %w", err)
		}
	}
	xh, xp, err := splitHostPort(xdsAddr)
	if err != nil {
		return nil, "", err
	}
	host, _ := os.Hostname()
	bs, err := envoy.Render(envoy.Bootstrap{
		NodeID:       fmt.Sprintf("diffusion-router-%s-%d", host, os.Getpid()),
		AdminAddress: c.AdminHost, AdminPort: adminPort,
		XDSAddress: connectHost(xh), XDSPort: int(xp),
		TLS: trust.EnvoyFilesIn(tlsDir),
	})
	if err != nil {
		return nil, "", err
	}
	if err := os.WriteFile(path, bs, 0o644); err != nil {
		return nil, "", fmt.Errorf("write bootstrap: %w", err)
	}
	ports, err := json.Marshal(runningEnvoy{AdminPort: adminPort, XDSPort: int(xp)})
	if err != nil {
		return nil, "", err
	}
	if err := os.WriteFile(filepath.Join(stateDir, localEnvoyFile), ports, 0o644); err != nil {
		return nil, "", fmt.Errorf("write %s: %w", localEnvoyFile, err)
	}
	return sup, net.JoinHostPort(c.AdminHost, strconv.Itoa(adminPort)), nil
}

// portsFree checks, before Envoy starts, that the ports it will bind are
// free, and names the process holding one that is not: Envoy itself would
// only log the failure, again and again.
func portsFree(host string, ports map[string]int) error {
	for what, port := range ports {
		if port == 0 {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err == nil {
			l.Close()
			continue
		}
		if p, ok := portowner.Find(port); ok {
			return fmt.Errorf("the %s port %d is already in use by %v", what, port, p)
		}
		return fmt.Errorf("the %s port %d cannot be bound: %w", what, port, err)
	}
	return nil
}

// waitEnvoyReady polls Envoy's admin /ready and the front port. It fails
// at once when Envoy exits (exited) or refuses its listener.
func waitEnvoyReady(ctx context.Context, admin, front string, exited <-chan error) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	ac := envoyadmin.NewAdminClient()
	for {
		err := ac.Ready(ctx, admin)
		if err == nil {
			var conn net.Conn
			conn, err = (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", front)
			if err == nil {
				conn.Close()
				return nil
			}
		}
		if err := startFailure(ctx, ac, admin, front); err != nil {
			return err
		}
		select {
		case err := <-exited:
			return fmt.Errorf("envoy did not start: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("envoy not ready: %w (last: %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// startFailure reads, from a starting Envoy's stats, the failures that
// waiting will not mend: its front listener refused, or its xDS connection
// failing TLS (credentials that do not belong together).
func startFailure(ctx context.Context, ac *envoyadmin.AdminClient, admin, front string) error {
	const rejected, unverified, tlsErrors = "listener_manager.lds.update_rejected", "cluster.xds_cluster.ssl.fail_verify_error", "cluster.xds_cluster.ssl.connection_error"
	stats, err := ac.Stats(ctx, admin, rejected, unverified, tlsErrors)
	if err != nil {
		return nil // not up yet: the caller waits
	}
	if stats[rejected] > 0 {
		return fmt.Errorf("envoy refused the front listener on %s (its log above says why: a port in use?)", front)
	}
	if tlsFailures := stats[unverified] + stats[tlsErrors]; tlsFailures >= 2 {
		return fmt.Errorf("envoy cannot connect to the control plane: the xDS connection failed TLS %d times; the credentials in the xDS TLS directory (ca.pem, envoy/, control-plane/) do not belong together", tlsFailures)
	}
	return nil
}

// drainEnvoy stops the front listener from taking new connections and waits,
// bounded, until the requests in flight have finished.
func drainEnvoy(admin string, timeout time.Duration, log *logrus.Entry) {
	ac := envoyadmin.NewAdminClient()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := ac.DrainListeners(ctx, admin); err != nil {
		log.WithError(err).Warn("could not drain Envoy's listeners; stopping it now")
		return
	}
	log.WithField("timeout", timeout.String()).Info("shutting down: no new connections; waiting for requests in flight")
	for {
		n, err := ac.Stat(ctx, admin, "http.front.downstream_rq_active")
		if err == nil && n == 0 {
			log.Info("all requests finished")
			return
		}
		select {
		case <-ctx.Done():
			log.WithField("in_flight", n).Warn("shutdown timeout: stopping Envoy with requests in flight")
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}
