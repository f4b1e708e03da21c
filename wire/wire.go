// Package wire is the contract between the control plane, the Envoy
// configuration it generates and the Wasm filter inside Envoy: header
// names, Envoy resource and metadata names, the paths and their classes, and
// the filter's configuration. Each name is defined here once; the filter is
// compiled to Wasm with this package, so it imports nothing heavy.
package wire

import "time"

// Headers.
const (
	// Set by the filter on requests.
	HeaderTask     = "x-diffusion-task"
	HeaderModel    = "x-diffusion-model"
	HeaderCost     = "x-diffusion-cost"
	HeaderRouterMS = "x-diffusion-router-ms"
	// HeaderTarget names the worker (job-id key) a job poll must reach;
	// only the filter sets it (a client's is removed).
	HeaderTarget = "x-diffusion-target"
	// Set by Envoy on every proxied answer, from the endpoint's metadata:
	// the worker that served it and the weight version it held.
	HeaderWorker        = "x-diffusion-worker"
	HeaderWeightVersion = "x-weight-version"
	HeaderRequestID     = "x-request-id"
)

// Envoy resource names and metadata keys.
const (
	ListenerFront   = "front"
	RouteFront      = "front"
	ClusterWorkers  = "workers"
	ClusterRegistry = "registry"
	// ClusterOTLP is the trace collector (--otlp-endpoint).
	ClusterOTLP = "otlp"

	// Endpoint metadata keys the subset load balancer selects on.
	SubsetKeyVideo  = "video"
	SubsetKeyImage  = "image"
	SubsetKeyWorker = "worker"
	SubsetKeyModel  = "model"
	// MetadataNamespace holds the endpoint metadata the answers' headers
	// are made from.
	MetadataNamespace = "diffusion-router"

	// RouteModelFallback names the route of requests whose model no worker
	// lists; the filter counts them by this name.
	RouteModelFallback = "model-fallback"
)

// RecheckInterval is how often a worker that has not passed a health check
// is checked again, when the health-check interval is longer.
const RecheckInterval = time.Second
