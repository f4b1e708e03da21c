package router

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"go.opentelemetry.io/otel/trace"

	"github.com/diffrouter/diffusion-router/api"
	"github.com/diffrouter/diffusion-router/fleet"
	"github.com/diffrouter/diffusion-router/heldjobs"
	"github.com/diffrouter/diffusion-router/jobbook"
	"github.com/diffrouter/diffusion-router/jobid"
	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/loadboard"
	"github.com/diffrouter/diffusion-router/metrics"
	"github.com/diffrouter/diffusion-router/queue"
	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/traces"
	"github.com/diffrouter/diffusion-router/wire"
	"github.com/diffrouter/diffusion-router/workerword"
	"github.com/diffrouter/diffusion-router/xds/publish"
	xdsserver "github.com/diffrouter/diffusion-router/xds/server"
	"github.com/diffrouter/diffusion-router/xds/translate"
	"github.com/diffrouter/diffusion-router/xds/trust"
)

// Run starts the router and blocks until ctx ends. ready, if not nil, is
// called once Envoy (or, with --external-envoy, the control plane) serves.
//
// It has two phases: build makes every part and serves nothing (a failure
// there leaves nothing running); serve starts the named runners, admits the
// first workers, starts the local Envoy and, at the end, shuts down in
// order.
func Run(ctx context.Context, c Config, log *logrus.Logger, ready func(Addresses)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := &router{c: c, log: log, base: log.WithField("component", "router")}
	defer r.close()
	if err := r.build(ctx); err != nil {
		return err
	}
	return r.serve(ctx, cancel, ready)
}

// router is the router's parts, made by build and run by serve.
type router struct {
	c    Config
	log  *logrus.Logger
	base *logrus.Entry
	// closers undo build's steps, run in reverse by close.
	closers []func()

	stateDir, tlsDir string
	// keepState keeps an owned state directory at exit: it holds video
	// jobs that still wait.
	keepState      bool
	serverTLS      *tls.Config
	adopt          runningEnvoy
	apiLis, xdsLis net.Listener
	addrs          Addresses
	opts           translate.Options

	reg        *registry.Registry
	xds        *xdsserver.Server
	metrics    *metrics.Metrics
	pub        *publish.Publisher
	board      *loadboard.Board // least-work only
	jobs       *jobbook.Book    // with the filter only
	queue      *queue.Queue     // --queue only
	held       *heldjobs.Holder // --hold-video-jobs only
	syncSecret []byte
	fleet      *fleet.Manager
	api        *http.Server
	tracer     trace.Tracer // a no-op one without --otlp-endpoint
}

func (r *router) onClose(f func()) { r.closers = append(r.closers, f) }

func (r *router) close() {
	for i := len(r.closers) - 1; i >= 0; i-- {
		r.closers[i]()
	}
}

// build makes the parts in order; nothing serves yet.
func (r *router) build(ctx context.Context) error {
	steps := []func(context.Context) error{
		r.openStateDir,
		r.loadCredentials,
		r.listen,
		r.routingOptions,
		r.openRegistry,
		r.buildXDS,
		r.buildFilterSide,
		r.publishFirst,
		r.startTracing,
		r.buildFleet,
		r.buildWorkerMetrics,
		r.buildAPI,
	}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return err
		}
	}
	return nil
}

// openStateDir is --state-dir; without it, a directory of this user's
// for the front port (defaultStateDir) removed when the router stops, or a
// temporary one when there is no fixed front port to find again. Only one
// router runs on a state directory.
func (r *router) openStateDir(context.Context) error {
	dir, owned := r.c.StateDir, false
	switch {
	case dir != "":
	case !r.c.ExternalEnvoy && r.c.Port != 0:
		dir, owned = defaultStateDir(r.c.Port), true
	default:
		d, err := os.MkdirTemp("", "diffusion-router-")
		if err != nil {
			return fmt.Errorf("create state directory: %w", err)
		}
		r.onClose(func() { os.RemoveAll(d) })
		r.stateDir = d
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state directory %s: %w", dir, err)
	}
	release, err := lockStateDir(dir)
	if err != nil {
		return err
	}
	if owned {
		r.onClose(func() {
			if !r.keepState {
				os.RemoveAll(dir)
			}
		})
	}
	r.onClose(release)
	r.stateDir = dir
	return nil
}

func (r *router) loadCredentials(context.Context) error {
	var err error
	r.tlsDir, r.serverTLS, err = xdsCredentials(r.c, r.stateDir, r.base)
	return err
}

// listen opens the API and xDS ports. An Envoy a crashed control plane left
// running keeps routing; this one takes it over on the ports its bootstrap
// names.
func (r *router) listen(context.Context) error {
	r.adopt = findLocalEnvoy(r.c, r.stateDir, r.base)
	if r.adopt.PID > 0 && r.c.XDSPort == 0 {
		r.c.XDSPort = r.adopt.XDSPort
	}
	// Ports left to the system must not be ones Envoy binds after us (the
	// front and admin ports): the system may well hand out a number the
	// operator chose for those.
	reserved := []int{r.c.Port, r.c.AdminPort}
	var err error
	if r.apiLis, err = listenAvoiding(r.c.APIHost, r.c.APIPort, reserved); err != nil {
		return fmt.Errorf("listen for the registry API: %w", err)
	}
	r.onClose(func() { r.apiLis.Close() })
	if r.xdsLis, err = listenAvoiding(r.c.XDSHost, r.c.XDSPort, reserved); err != nil {
		return fmt.Errorf("listen for xDS: %w", err)
	}
	r.onClose(func() { r.xdsLis.Close() })
	r.addrs = Addresses{API: r.apiLis.Addr().String(), XDS: r.xdsLis.Addr().String()}
	return nil
}

func (r *router) routingOptions(context.Context) error {
	var err error
	r.opts, err = translateOptions(r.c, r.addrs.API, r.base)
	return err
}

// openRegistry opens the stored registry and starts a new xDS epoch.
func (r *router) openRegistry(context.Context) error {
	reg, store, err := openRegistry(r.stateDir, r.base)
	if err != nil {
		return err
	}
	r.onClose(func() { store.Close() })
	epoch, err := store.NextEpoch()
	if err != nil {
		return fmt.Errorf("registry store: %w", err)
	}
	r.reg = reg
	r.xds = xdsserver.New(r.log.WithField("component", "xds"))
	r.xds.SetEpoch(epoch)
	return nil
}

func (r *router) buildXDS(context.Context) error {
	r.metrics = metrics.New(r.reg, r.xds.Nodes)
	r.pub = &publish.Publisher{Registry: r.reg, Sink: r.xds, Options: r.opts, Pushed: r.metrics.XDSPush, Log: r.base}
	return nil
}

// buildFilterSide makes what the Wasm filters talk to: the job book and the
// secret their syncs are signed with and, with least-work routing, the
// board they report their load to and pick from.
func (r *router) buildFilterSide(context.Context) error {
	if r.opts.Filter != nil {
		secret, err := trust.ControlPlaneJobSecret(r.tlsDir)
		if err != nil {
			return fmt.Errorf("filter: %w", err)
		}
		r.syncSecret = []byte(secret)
		r.jobs = jobbook.New(jobbook.DefaultCapacity)
	}
	if r.opts.FilterPicks() {
		log := r.log.WithField("component", "loadboard")
		r.board = loadboard.New(loadboard.Options{Synced: r.xds.SyncedGeneration,
			Ejection: wire.EjectionAfter(int64(r.c.OutlierFailures)), Suspected: logSuspect(log)})
		r.pub.Publishing = r.board.Published
	}
	if q := r.c.Queue; q.On {
		r.queue = queue.New(queue.Options{MaxQueued: q.MaxQueued, MaxPerTenant: q.MaxPerTenant, Timeout: q.Timeout,
			Weights: q.Weights, MaxTenants: q.MaxTenants, TenantIdle: q.TenantIdle, Ahead: q.Ahead, Granted: r.queueGranted(r.log.WithField("component", "queue"))})
		r.metrics.Queue(r.queue)
		if err := r.openHeld(); err != nil {
			return err
		}
	}
	return nil
}

// pinnedOf is the queue as updates ask it about requests waiting for one
// weight version (nil without the queue: a nil *queue.Queue in the
// interface would not be nil).
func pinnedOf(q *queue.Queue) interface {
	WaitingFor(string) int
	Closing([]string)
} {
	if q == nil {
		return nil
	}
	return q
}

// videoModel is the model a video worker in rotation holds ("" if none):
// a held job's answers name it, as a worker's would, when its create
// names none.
func (r *router) videoModel() string {
	for _, w := range r.reg.Snapshot().Workers {
		if w.Routable() && w.Caps.Video() && w.ModelPath != "" {
			return w.ModelPath
		}
	}
	return ""
}

// openHeld opens the video jobs the router holds (and any a stopped
// router left waiting in the state directory).
func (r *router) openHeld() error {
	envoy := r.c.HeldEnvoyURL()
	if envoy == "" || r.opts.Filter == nil {
		return nil
	}
	h, err := heldjobs.Open(heldjobs.Options{Dir: filepath.Join(r.stateDir, "held-jobs"), MaxBytes: r.c.Queue.MaxHeldBytes,
		Queue: r.queue, Signer: jobid.NewSigner(r.syncSecret), Secret: r.syncSecret, Envoy: envoy,
		Client:   &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: time.Minute}},
		Defaults: wire.DefaultFilterConfig().Defaults, Model: r.videoModel, Timeout: r.c.Queue.Timeout, Log: r.log.WithField("component", "heldjobs")})
	if err != nil {
		return err
	}
	r.held = h
	r.metrics.Held(h)
	r.onClose(func() {
		n, err := h.Close()
		if err != nil {
			r.base.WithError(err).Warn("closing the held video jobs' store")
		}
		if n > 0 {
			r.keepState = true
			r.base.WithFields(logrus.Fields{"jobs": n, "state_dir": r.stateDir}).
				Warn("video jobs still wait in the router; they are kept in the state directory, and a router started with the same flags sends them")
		}
	})
	return nil
}

func (r *router) publishFirst(ctx context.Context) error { return r.pub.Once(ctx) }

func (r *router) buildFleet(ctx context.Context) error {
	var pickers fleet.Pickers
	if r.board != nil {
		// Drains wait for the filters to see a worker leave.
		pickers = r.board
	}
	c := r.c
	r.fleet = fleet.NewManager(ctx, r.reg, r.xds, fleet.Config{
		Pickers:          pickers,
		ProbeTimeout:     c.HealthCheckTimeout,
		HealthInterval:   c.HealthCheckInterval,
		FailureThreshold: c.HealthCheckFailureThreshold,
		DrainTimeout:     c.DrainTimeout,
		SyncTimeout:      c.SyncTimeout,
		ObserveInterval:  c.ObserveInterval,
		OutlierFailures:  c.OutlierFailures,
		Recorder:         r.metrics,
		HoldInPlace:      c.Queue.On,
		Pinned:           pinnedOf(r.queue),
		Tracer:           r.tracer,
		// Each worker's update, and in drain mode its drain, is bounded.
		WeightUpdateTimeout: c.WeightUpdateTimeout,
	}, r.log.WithField("component", "fleet"))
	return nil
}

// buildWorkerMetrics exports each worker's state, weights, requests and,
// with least-work, what the filters count and learned.
func (r *router) buildWorkerMetrics(context.Context) error {
	r.metrics.Workers(func() []metrics.WorkerSample {
		snap := r.reg.Snapshot()
		loads := r.fleet.Loads()
		var hosts map[string]loadboard.HostLoad
		var suspects map[string]loadboard.Suspect
		if r.board != nil {
			hosts, suspects = r.board.Hosts(), r.board.Suspects()
		}
		out := make([]metrics.WorkerSample, 0, len(snap.Workers))
		for _, w := range snap.Workers {
			s := metrics.WorkerSample{Worker: w.Key(), State: string(w.State), WeightVersion: w.WeightVersion,
				Requests: loads[w.Key()].Requests, Picked: hosts != nil}
			if h, ok := hosts[loadboard.Addr(w)]; ok {
				s.OutstandingWork, s.OutstandingReqs, s.MsPerCost = h.Work, h.Requests, h.MsPerCost
			}
			_, s.Suspect = suspects[loadboard.Addr(w)]
			out = append(out, s)
		}
		return out
	})
	return nil
}

func (r *router) buildAPI(context.Context) error {
	c := r.c
	var handler http.Handler = &api.Server{Fleet: r.fleet, Log: r.log.WithField("component", "api"), FanoutTimeout: c.WeightUpdateTimeout,
		QuarantineChecksumMismatch: c.QuarantineChecksumMismatch, Metrics: r.metrics.Handler(), AdminToken: c.AdminToken,
		Board: r.board, SyncSecret: r.syncSecret, Jobs: r.jobs, Queue: r.queue, Held: r.held, DefaultSlots: r.c.Queue.Slots, HoldWhileAsleep: c.Queue.HoldWhileAsleep}
	if c.OTLPEndpoint != "" {
		handler = traces.Handler(r.tracer, handler, wire.PathInternalPrefix)
	}
	r.api = apiServer(handler, uint32(r.opts.RegistryMaxRequests))
	return nil
}

// apiServer serves the REST API over HTTP/1.1 (clients, curl) and
// cleartext HTTP/2 (Envoy: translate.RegistryCluster), where one
// connection per Envoy worker thread carries every request waiting in the
// queue as a stream: streams allows that many at once (0: Go's default).
// Idle connections close after a while.
func apiServer(handler http.Handler, streams uint32) *http.Server {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	h2 := &http.HTTP2Config{}
	if streams > 0 {
		h2.MaxConcurrentStreams = int(streams)
	}
	return &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		Protocols: &protocols, HTTP2: h2}
}

// startTracing starts the control plane's tracer (--otlp-endpoint; a
// no-op one without), flushed and stopped when the router stops.
func (r *router) startTracing(ctx context.Context) error {
	tracer, stop, err := traces.Start(ctx, r.c.OTLPEndpoint, r.c.TraceSampling)
	if err != nil {
		return err
	}
	r.tracer = tracer
	r.onClose(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := stop(sctx); err != nil {
			r.base.WithError(err).Warn("flushing the last spans")
		}
	})
	return nil
}

// runners are the long-running parts: the first to fail stops the router.
type runners struct {
	wg   sync.WaitGroup
	errc chan error
}

func (rs *runners) start(name string, f func() error) {
	rs.wg.Add(1)
	go func() {
		defer rs.wg.Done()
		if err := f(); err != nil {
			select {
			case rs.errc <- fmt.Errorf("%s: %w", name, err):
			default: // the first failure is the one reported
			}
		}
	}()
}

// serve runs the parts until ctx ends or one fails, then shuts down: Envoy
// drains first while the control plane still serves it, then the rest.
func (r *router) serve(ctx context.Context, cancel context.CancelFunc, ready func(Addresses)) error {
	r.fleet.ResumeAfterRestart(ctx)
	initial := r.c.WorkerURLs
	if r.c.DemoWorkers > 0 {
		demo, err := r.startDemo(ctx)
		if err != nil {
			return err
		}
		initial = append(append([]string(nil), initial...), demo...)
	}

	run := &runners{errc: make(chan error, 1)}
	r.startRunners(ctx, run)
	r.base.WithFields(logrus.Fields{"api": r.addrs.API, "xds": r.addrs.XDS, "state_dir": r.stateDir,
		"routing_algorithm": r.opts.Policy}).Info("control plane listening")
	admitInitial(ctx, r.fleet, initial, r.base)

	stopLocalEnvoy, err := r.startLocalEnvoy(ctx, run)
	if err != nil {
		cancel()
		_ = r.api.Close()
		run.wg.Wait()
		return err
	}
	if ctx.Err() == nil && ready != nil {
		ready(r.addrs)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-run.errc:
		r.base.WithError(runErr).Error("router component failed; shutting down")
	}
	// The control plane keeps serving xDS while Envoy drains, so Envoy keeps
	// its configuration to the end.
	stopLocalEnvoy()
	cancel()
	shutdownCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	_ = r.api.Shutdown(shutdownCtx)
	run.wg.Wait()
	r.fleet.Wait()
	return runErr
}

// startDemo starts --demo-workers; they stop when the router has shut down
// (after Envoy drained the requests they serve).
func (r *router) startDemo(ctx context.Context) ([]string, error) {
	bin, err := findFakeWorker(r.c.DemoWorkerBin)
	if err != nil {
		return nil, err
	}
	demo, err := startDemoWorkers(ctx, bin, r.c.DemoWorkers, r.c.DemoTimeScale, r.log.WithField("component", "demo"))
	if err != nil {
		return nil, err
	}
	r.onClose(demo.stop)
	return demo.urls, nil
}

// startRunners starts the control plane's servers and loops.
func (r *router) startRunners(ctx context.Context, run *runners) {
	run.start("publisher", func() error { return r.pub.Run(ctx) })
	run.start("xds", func() error { return r.xds.Serve(ctx, r.xdsLis, r.serverTLS) })
	run.start("api", func() error {
		if err := r.api.Serve(api.JSONErrorListener(r.apiLis)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	if r.queue != nil {
		go r.queue.Run(ctx, queueTick, r.queueFleet)
	}
	if r.held != nil {
		go r.held.Run(ctx)
	}
	go r.fleet.Observe(ctx)
	go r.fleet.Probe(ctx)
	if r.board != nil && r.c.WorkerWordInterval > 0 {
		// The workers' own word corrects what the filters count.
		reg := r.reg
		ww := &workerword.Watcher{Client: &http.Client{}, Interval: r.c.WorkerWordInterval,
			Targets: func() []workerword.Target { return wordTargets(reg.Snapshot()) },
			Sink:    r.board, Log: r.log.WithField("component", "workerword"), OpenFor: leastwork.JobHold}
		if r.jobs != nil {
			// A worker with no job list has its open jobs polled.
			ww.Jobs = r.jobs
		}
		go ww.Run(ctx)
	}
}

// startLocalEnvoy starts (or adopts) the supervised Envoy and waits until
// it serves; it returns how to stop it: drain first, then end it. With
// --external-envoy there is nothing to start. A port in use, or an Envoy
// that exits or is not ready within a minute, is an error: the router
// exits rather than run without its data plane.
func (r *router) startLocalEnvoy(ctx context.Context, run *runners) (func(), error) {
	if r.c.ExternalEnvoy {
		return func() {}, nil
	}
	if r.adopt.PID == 0 {
		if err := portsFree(r.c.Host, map[string]int{"front": r.c.Port, "Envoy admin": r.c.AdminPort}); err != nil {
			return nil, err
		}
	}
	sup, adminAddr, err := localEnvoy(r.c, r.stateDir, r.tlsDir, r.addrs.XDS, r.adopt, r.log)
	if err != nil {
		return nil, err
	}
	r.addrs.Admin = adminAddr
	r.addrs.Front = net.JoinHostPort(connectHost(r.c.Host), strconv.Itoa(r.c.Port))
	// Envoy outlives ctx: on shutdown it first drains (see serve).
	envoyCtx, stopEnvoy := context.WithCancel(context.Background())
	r.onClose(stopEnvoy)
	exited := make(chan error, 1)
	run.start("envoy", func() error {
		err := sup.Run(envoyCtx)
		exited <- err
		return err
	})
	if err := waitEnvoyReady(ctx, adminAddr, r.addrs.Front, exited); err != nil {
		stopEnvoy()
		return nil, err
	}
	sup.Serving()
	if r.adopt.PID > 0 {
		// Ready long since: "ready" here means it runs this control
		// plane's configuration (the registry routes name its new API port).
		if err := r.waitAdoptedSynced(ctx); err != nil {
			stopEnvoy()
			return nil, err
		}
	}
	r.base.WithFields(logrus.Fields{"front": r.addrs.Front, "admin": r.addrs.Admin}).Info("Envoy ready")
	return func() {
		drainEnvoy(adminAddr, r.c.ShutdownTimeout, r.base)
		stopEnvoy()
	}, nil
}

// waitAdoptedSynced waits until the adopted Envoy has reconnected to xDS
// and applied the current configuration (its reconnect back-off can be
// tens of seconds after a long outage).
func (r *router) waitAdoptedSynced(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for len(r.xds.Nodes()) == 0 {
		select {
		case <-ctx.Done():
			return errors.New("the adopted Envoy did not reconnect to xDS within a minute")
		case <-time.After(50 * time.Millisecond):
		}
	}
	if _, err := r.xds.WaitSynced(ctx, r.xds.Generation()); err != nil {
		return fmt.Errorf("the adopted Envoy: %w", err)
	}
	return nil
}

// logSuspect logs, once each, a worker becoming suspect (a request on it
// runs far past its expected time) and its return to rotation.
func logSuspect(log *logrus.Entry) func(addr string, o wire.Overdue, suspect bool) {
	return func(addr string, o wire.Overdue, suspect bool) {
		f := log.WithFields(logrus.Fields{"worker": addr, "ran_ms": o.RanMs, "expected_ms": o.ExpectedMs})
		if suspect {
			f.Warn("worker suspect: a request on it runs far past its expected time (it may hang); no grants or picks until it answers")
			return
		}
		f.Info("suspect worker answered again; back in rotation")
	}
}

// queueTick is how often the queue dispatches while requests wait, besides
// whenever a request arrives or an Envoy reports.
const queueTick = 20 * time.Millisecond

// queueFleet is the fleet as the queue sees it: the workers a request may
// go to (as in the filters' views: not failing Envoy's health checks, not
// ejected) with every Envoy's work on them.
func (r *router) queueFleet() queue.Fleet {
	snap := r.reg.Snapshot()
	view := r.board.FleetView(snap, r.fleet.OutByEnvoy())
	routable := 0
	for _, w := range snap.Workers {
		if w.Routable() {
			routable++
		}
	}
	return queue.Fleet{View: view, DefaultSlots: r.c.Queue.Slots, ReportedAt: r.board.ReportedAt, Freed: r.board.Freed,
		History: snap.Fleet.History, Updating: snap.Fleet.Updating,
		// Workers out only for a while: loading weights, asleep while the
		// queue waits it out, or in rotation but not yet (or no longer)
		// in every Envoy's (an update's end, a join, an ejection).
		Paused: snap.Count().Paused(r.c.Queue.HoldWhileAsleep) || len(view.Workers) < routable}
}

// queueGranted records a grant: the wait in the metrics by priority, and a
// debug line with the tenant, priority, worker and wait.
func (r *router) queueGranted(log *logrus.Entry) func(queue.Request, string, time.Duration) {
	return func(q queue.Request, worker string, waited time.Duration) {
		r.metrics.QueueWaited(q.Priority, waited)
		if log.Logger.IsLevelEnabled(logrus.DebugLevel) {
			log.WithFields(logrus.Fields{"tenant": q.Tenant, "priority": q.Priority, "worker": worker,
				"waited_ms": waited.Milliseconds(), "envoy": q.Node}).Debug("queued request granted a worker")
		}
	}
}
