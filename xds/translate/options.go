// Package translate turns registry state into Envoy resources. Everything here
// is a pure function of its arguments: no I/O, no clocks, no globals, so each
// builder is table-tested by comparing protos and the whole translation by
// golden files.
package translate

import (
	"fmt"
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

// Sizes and timings the builders share.
const (
	// WorkerReadLimit is the workers cluster's per-connection buffer limit:
	// one read from a worker brings at most this much (plus one 16 KiB
	// slice) to the filters at once.
	WorkerReadLimit = 1 << 20
	// FrontBufferLimit is the front listener's buffer limit, which also
	// bounds what a filter may hold of one stream. It leaves room for the
	// Wasm filter's largest hold (1 MiB) plus one worker read, so an answer
	// the filter holds is never cut by Envoy (rs_too_large), however the
	// worker chunks it.
	FrontBufferLimit = 4 << 20

	// WorkerIdleTimeout closes an idle connection to a worker before the
	// worker's own keep-alive limit (uvicorn: 5 s) would.
	WorkerIdleTimeout = 3 * time.Second
	// RegistryIdleTimeout closes a connection to the control plane that
	// carried no stream for this long.
	RegistryIdleTimeout = time.Minute

	// transportSocketMatchKey is the endpoint metadata filter Envoy reads to
	// pick a transport socket per endpoint (TLS for https:// workers).
	transportSocketMatchKey = "envoy.transport_socket_match"
)

// Options are the router settings that shape Envoy's configuration. They come
// from the command line and do not change while the router runs.
type Options struct {
	ListenAddress string
	ListenPort    uint32
	// ExclusivePort turns SO_REUSEPORT off on the front listener: the
	// router's own local Envoy must be the only one on its port (a second
	// one, left by a crash, would take part of the clients with a stale
	// configuration). Envoy replicas sharing a host port on purpose
	// (--external-envoy) keep Envoy's default.
	ExclusivePort bool

	Policy wire.Policy
	// Timeout bounds a whole request to a worker; 0 means no limit, because
	// generations take seconds to minutes and Envoy's 15 s default would cut them.
	Timeout time.Duration
	// MaxConnections is the upstream concurrency per worker.
	MaxConnections uint32
	// MaxRetries is how often a request that failed before a worker answered is
	// tried again on another worker.
	MaxRetries uint32

	ConnectTimeout              time.Duration
	HealthCheckInterval         time.Duration
	HealthCheckTimeout          time.Duration
	HealthCheckFailureThreshold uint32
	// OutlierConsecutiveFailures is how many failed requests in a row (5xx,
	// connect failures, resets, timeouts) make Envoy eject a worker at once.
	OutlierConsecutiveFailures uint32

	// RegistryAddress and RegistryPort are where Envoy reaches the control
	// plane's REST API (the "registry" cluster).
	RegistryAddress string
	RegistryPort    uint32
	// RegistryMaxRequests, when set, raises the registry cluster's
	// circuit breakers to this many connections, pending and active
	// requests: with the router-owned queue every waiting request holds a
	// call open there.
	RegistryMaxRequests uint32
	// HoldWhileAsleep routes generations as usual while the fleet sleeps
	// (the router-owned queue holds them until it wakes) instead of
	// answering 503 at once. A stream takes the route table it started
	// under, so the 503 route would outlast the wake for a held request.
	HoldWhileAsleep bool

	// StrictModels answers 404 to a request naming a model no worker
	// lists; by default it goes to a worker of its task type, as a
	// sglang-diffusion server ignores the name.
	StrictModels bool

	// Filter, when set, puts the Wasm tagging filter in front of the router.
	Filter *FilterOptions

	// OTLPAddress and OTLPPort, when set, are an OTLP/gRPC trace
	// collector: Envoy traces TraceSampling (0 to 1) of the requests.
	OTLPAddress   string
	OTLPPort      uint32
	TraceSampling float64
}

// FilterPicks reports whether the Wasm filter names each generation's
// worker: least-work always; round-robin when the filter runs (one cycle
// over all of an Envoy's threads, where Envoy's own keeps one per thread).
func (o Options) FilterPicks() bool {
	spec, err := o.Policy.Spec()
	return err == nil && spec.FilterPicks && (o.Filter != nil || spec.NeedsFilter)
}

// FilterOptions configure the Wasm filter.
type FilterOptions struct {
	// Path is the .wasm file as the Envoy process sees it.
	Path string
	// Config is the plugin's JSON configuration. It is readable on every
	// Envoy's admin port (config_dump): no secrets here.
	Config string
	// HostEnvKeys are variables of the Envoy process's environment that the
	// plugin's VM sees (where secrets travel instead).
	HostEnvKeys []string
}

// Validate reports options that would produce a configuration Envoy rejects.
func (o Options) Validate() error {
	switch {
	case o.ListenAddress == "":
		return fmt.Errorf("listen address is empty")
	case o.ListenPort == 0 || o.ListenPort > 65535:
		return fmt.Errorf("listen port %d out of range", o.ListenPort)
	case o.RegistryAddress == "" || o.RegistryPort == 0 || o.RegistryPort > 65535:
		return fmt.Errorf("registry address %s:%d is not valid", o.RegistryAddress, o.RegistryPort)
	case o.OTLPAddress != "" && (o.OTLPPort == 0 || o.OTLPPort > 65535):
		return fmt.Errorf("OTLP endpoint port %d out of range", o.OTLPPort)
	case !(o.TraceSampling >= 0 && o.TraceSampling <= 1):
		return fmt.Errorf("trace sampling %v must be from 0 to 1", o.TraceSampling)
	case o.Timeout < 0:
		return fmt.Errorf("timeout must not be negative")
	case o.MaxConnections == 0:
		return fmt.Errorf("max connections must be at least 1")
	case o.ConnectTimeout <= 0:
		return fmt.Errorf("connect timeout must be positive")
	case o.HealthCheckInterval <= 0 || o.HealthCheckTimeout <= 0:
		return fmt.Errorf("health check interval and timeout must be positive")
	case o.HealthCheckFailureThreshold == 0:
		return fmt.Errorf("health check failure threshold must be at least 1")
	case o.OutlierConsecutiveFailures == 0:
		return fmt.Errorf("outlier consecutive failures must be at least 1")
	}
	spec, err := o.Policy.Spec()
	if err != nil {
		return err
	}
	if spec.NeedsFilter && o.Filter == nil {
		return fmt.Errorf("%s routing needs the Wasm filter: it is the filter that picks the worker", o.Policy)
	}
	if o.Filter != nil && (o.Filter.Path == "" || o.Filter.Config == "") {
		return fmt.Errorf("wasm filter needs a path and a configuration")
	}
	return nil
}
