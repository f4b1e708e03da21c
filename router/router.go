package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/api"
	"github.com/diffrouter/diffusion-router/envoy"
	"github.com/diffrouter/diffusion-router/fleet"
	"github.com/diffrouter/diffusion-router/jobbook"
	"github.com/diffrouter/diffusion-router/loadboard"
	"github.com/diffrouter/diffusion-router/metrics"
	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/wire"
	"github.com/diffrouter/diffusion-router/workerword"
	"github.com/diffrouter/diffusion-router/xds/publish"
	xdsserver "github.com/diffrouter/diffusion-router/xds/server"
	"github.com/diffrouter/diffusion-router/xds/translate"
	"github.com/diffrouter/diffusion-router/xds/trust"
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
	lv, err := logrus.ParseLevel(strings.ToLower(level))
	if err != nil {
		lv = logrus.InfoLevel
	}
	l.SetLevel(lv)
	return l
}

// Run starts the router and blocks until ctx ends. ready, if not nil, is
// called once Envoy (or, with --external-envoy, the control plane) serves.
func Run(ctx context.Context, c Config, log *logrus.Logger, ready func(Addresses)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	base := log.WithField("component", "router")

	stateDir := c.StateDir
	if stateDir == "" {
		d, err := os.MkdirTemp("", "diffusion-router-")
		if err != nil {
			return fmt.Errorf("create state directory: %w", err)
		}
		defer os.RemoveAll(d)
		stateDir = d
	} else if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return fmt.Errorf("create state directory %s: %w", stateDir, err)
	}

	tlsDir, serverTLS, err := xdsCredentials(c, stateDir, base)
	if err != nil {
		return err
	}

	// An Envoy a crashed control plane left running keeps routing; this one
	// takes it over on the ports its bootstrap names.
	adopt := findLocalEnvoy(c, stateDir, base)
	if adopt.PID > 0 && c.XDSPort == 0 {
		c.XDSPort = adopt.XDSPort
	}
	// Ports left to the system must not be ones Envoy binds after us (the
	// front and admin ports): the system may well hand out a number the
	// operator chose for those.
	reserved := []int{c.Port, c.AdminPort}
	apiLis, err := listenAvoiding(c.APIHost, c.APIPort, reserved)
	if err != nil {
		return fmt.Errorf("listen for the registry API: %w", err)
	}
	defer apiLis.Close()
	xdsLis, err := listenAvoiding(c.XDSHost, c.XDSPort, reserved)
	if err != nil {
		return fmt.Errorf("listen for xDS: %w", err)
	}
	defer xdsLis.Close()
	addrs := Addresses{API: apiLis.Addr().String(), XDS: xdsLis.Addr().String()}

	opts, err := translateOptions(c, addrs.API, base)
	if err != nil {
		return err
	}

	reg, store, err := openRegistry(stateDir, base)
	if err != nil {
		return err
	}
	defer store.Close()
	epoch, err := store.NextEpoch()
	if err != nil {
		return fmt.Errorf("registry store: %w", err)
	}
	xds := xdsserver.New(log.WithField("component", "xds"))
	xds.SetEpoch(epoch)
	mx := metrics.New(reg, xds.Nodes)
	pub := &publish.Publisher{Registry: reg, Sink: xds, Options: opts, Pushed: mx.XDSPush, Log: base}
	// Least-work routing: the filters report their load to this board and
	// pick from the view it answers; drains wait for them to see a change.
	var board *loadboard.Board
	var pickers fleet.Pickers
	var syncSecret []byte
	var jobs *jobbook.Book
	if opts.Filter != nil {
		// The filters sign their syncs and job ids with the job-id
		// secret, and record their video jobs' versions in the book.
		secret, err := trust.ControlPlaneJobSecret(tlsDir)
		if err != nil {
			return fmt.Errorf("filter: %w", err)
		}
		syncSecret = []byte(secret)
		jobs = jobbook.New(jobbook.DefaultCapacity)
	}
	if opts.Policy == translate.PolicyLeastWork {
		board = loadboard.New(loadboard.Options{Synced: xds.SyncedGeneration,
			Ejection: wire.EjectionAfter(int64(c.OutlierFailures))})
		pickers = board
		pub.Publishing = board.Published
	}
	if err := pub.Once(ctx); err != nil {
		return err
	}
	fl := fleet.NewManager(ctx, reg, xds, fleet.Config{
		Pickers:          pickers,
		ProbeTimeout:     c.HealthCheckTimeout,
		HealthInterval:   c.HealthCheckInterval,
		FailureThreshold: c.HealthCheckFailureThreshold,
		DrainTimeout:     c.DrainTimeout,
		SyncTimeout:      c.SyncTimeout,
		ObserveInterval:  c.ObserveInterval,
		OutlierFailures:  c.OutlierFailures,
		Recorder:         mx,
		// Each worker's update, and in drain mode its drain, is bounded.
		WeightUpdateTimeout: c.WeightUpdateTimeout,
	}, log.WithField("component", "fleet"))

	fl.ResumeAfterRestart(ctx)
	initial := c.WorkerURLs
	if c.DemoWorkers > 0 {
		demo, err := startDemoWorkers(ctx, c.DemoWorkers, c.DemoTimeScale, log.WithField("component", "demo"))
		if err != nil {
			return err
		}
		initial = append(append([]string(nil), initial...), demo...)
	}

	var wg sync.WaitGroup
	errc := make(chan error, 4)
	goRun := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}

	goRun("publisher", func() error { return pub.Run(ctx) })
	goRun("xds", func() error { return xds.Serve(ctx, xdsLis, serverTLS) })
	apiSrv := &http.Server{
		Handler: &api.Server{Fleet: fl, Log: log.WithField("component", "api"), FanoutTimeout: c.WeightUpdateTimeout,
			QuarantineChecksumMismatch: c.QuarantineChecksumMismatch, Metrics: mx.Handler(), AdminToken: c.AdminToken, Board: board,
			SyncSecret: syncSecret, Jobs: jobs},
		ReadHeaderTimeout: 10 * time.Second,
	}
	goRun("api", func() error {
		if err := apiSrv.Serve(api.JSONErrorListener(apiLis)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	go fl.Observe(ctx)
	go fl.Probe(ctx)
	if board != nil && c.WorkerWordInterval > 0 {
		// The workers' own word corrects what the filters count.
		ww := &workerword.Watcher{Client: &http.Client{}, Interval: c.WorkerWordInterval, Targets: func() []workerword.Target { return wordTargets(reg.Snapshot()) },
			Sink: board, Log: log.WithField("component", "workerword")}
		go ww.Run(ctx)
	}

	base.WithFields(logrus.Fields{"api": addrs.API, "xds": addrs.XDS, "state_dir": stateDir,
		"routing_algorithm": opts.Policy}).Info("control plane listening")

	admitInitial(ctx, fl, initial, base)

	stopLocalEnvoy := func() {}
	if !c.ExternalEnvoy {
		sup, adminAddr, err := localEnvoy(c, stateDir, tlsDir, addrs.XDS, adopt, log)
		if err != nil {
			cancel()
			_ = apiSrv.Close()
			wg.Wait()
			return err
		}
		addrs.Admin = adminAddr
		addrs.Front = net.JoinHostPort(connectHost(c.Host), strconv.Itoa(c.Port))
		// Envoy outlives ctx: on shutdown it first drains (see below).
		envoyCtx, stopEnvoy := context.WithCancel(context.Background())
		defer stopEnvoy()
		stopLocalEnvoy = func() {
			drainEnvoy(adminAddr, c.ShutdownTimeout, base)
			stopEnvoy()
		}
		goRun("envoy", func() error { return sup.Run(envoyCtx) })
		if err := waitEnvoyReady(ctx, adminAddr, addrs.Front); err != nil {
			base.WithError(err).Error("Envoy did not become ready")
			cancel()
		} else {
			base.WithFields(logrus.Fields{"front": addrs.Front, "admin": addrs.Admin}).Info("Envoy ready")
		}
	}
	if ctx.Err() == nil && ready != nil {
		ready(addrs)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		base.WithError(runErr).Error("router component failed; shutting down")
	}
	// The control plane keeps serving xDS while Envoy drains, so Envoy keeps
	// its configuration to the end.
	stopLocalEnvoy()
	cancel()
	shutdownCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	_ = apiSrv.Shutdown(shutdownCtx)
	wg.Wait()
	fl.Wait()
	return runErr
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
	ac := envoy.NewAdminClient()
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
	ac := envoy.NewAdminClient()
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

// wordTargets are the workers whose own word is read: those Envoy routes
// to or drains.
func wordTargets(s registry.Snapshot) []workerword.Target {
	var out []workerword.Target
	for _, w := range s.Workers {
		if w.InEnvoy() {
			out = append(out, workerword.Target{Addr: loadboard.Addr(w), URL: w.URL.String(), Video: w.Caps.Video()})
		}
	}
	return out
}
