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
	if c.ExternalEnvoy || c.StateDir == "" {
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

// waitEnvoyReady polls Envoy's admin /ready and the front port.
func waitEnvoyReady(ctx context.Context, admin, front string) error {
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
		select {
		case <-ctx.Done():
			return fmt.Errorf("envoy not ready: %w (last: %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
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
