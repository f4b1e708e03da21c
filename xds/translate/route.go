package translate

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// FanoutPaths are fleet-wide control calls: the control plane relays them to
// every worker and aggregates the answers.
var FanoutPaths = []string{
	"/update_weights_from_disk",
	"/release_memory_occupation",
	"/resume_memory_occupation",
	"/get_weights_checksum",
	"/v1/set_lora",
	"/v1/merge_lora_weights",
	"/v1/unmerge_lora_weights",
}

// RegistryPaths are answered by the control plane, on the front port as on
// its own. Everything else goes to a worker.
var RegistryPaths = append([]string{
	"/add_worker",
	"/remove_worker",
	"/list_workers",
	"/workers",
	"/health",
	"/health_workers",
	"/v1/models",
}, FanoutPaths...)

// Messages of the router's own replies; the local-reply config wraps them in
// JSON {"error": ...}.
const (
	MsgNoWorkers           = "no workers are registered; add one with POST /add_worker"
	MsgNoVideoWorkers      = "no video-capable worker is registered (no worker reports a video task type such as T2V, I2V or TI2V in /v1/models)"
	MsgAllQuarantined      = "all workers are quarantined; re-admit one with POST /add_worker or PUT /workers/{worker_id} {\"is_dead\": false} (see GET /workers for the reasons)"
	MsgAllVideoQuarantined = "all video-capable workers are quarantined; re-admit one with POST /add_worker or PUT /workers/{worker_id} {\"is_dead\": false}"
	MsgFleetAsleep         = "the fleet is asleep (memory released); call POST /resume_memory_occupation first"
)

// Response headers that name, on every proxied answer, the worker that
// served it and the weight version it held (from its endpoint metadata).
const (
	HeaderWorker        = "x-diffusion-worker"
	HeaderWeightVersion = "x-weight-version"
	metadataNamespace   = "diffusion-router"
)

// Fleet is what the routes depend on: whether anything can be routed at all.
type Fleet struct {
	Workers      int // registered, in any state
	VideoWorkers int // registered and video-capable, in any state
	// Quarantined and VideoQuarantined count the quarantined among them.
	Quarantined      int
	VideoQuarantined int
	// Routable counts active workers that are awake; Asleep the active ones
	// whose memory is released.
	Routable, VideoRoutable int
	Asleep, VideoAsleep     int
}

// FrontRoutes is the route table of the front listener.
func FrontRoutes(o Options, f Fleet) *routev3.RouteConfiguration {
	routes := make([]*routev3.Route, 0, len(RegistryPaths)+4)
	for _, p := range RegistryPaths {
		routes = append(routes, registryRoute(&routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: p}}))
	}
	routes = append(routes, registryRoute(&routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/workers/"}}))

	// Video jobs live on video-capable workers only.
	for _, m := range []*routev3.RouteMatch{
		{PathSpecifier: &routev3.RouteMatch_Path{Path: "/v1/videos"}},
		{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/v1/videos/"}},
	} {
		r := &routev3.Route{Match: m}
		switch {
		case f.VideoWorkers == 0:
			r.Action = directResponse(400, MsgNoVideoWorkers)
		case f.VideoQuarantined == f.VideoWorkers:
			r.Action = directResponse(503, MsgAllVideoQuarantined)
		case f.VideoRoutable == 0 && f.VideoAsleep > 0:
			r.Action = directResponse(503, MsgFleetAsleep)
		default:
			action := workersAction(o)
			action.MetadataMatch = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
				"envoy.lb": {Fields: map[string]*structpb.Value{SubsetKeyVideo: structpb.NewBoolValue(true)}},
			}}
			r.Action = &routev3.Route_Route{Route: action}
			r.ResponseHeadersToAdd = servedByHeaders()
		}
		routes = append(routes, r)
	}

	catchAll := &routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}}
	switch {
	case f.Workers == 0:
		catchAll.Action = directResponse(503, MsgNoWorkers)
	case f.Quarantined == f.Workers:
		catchAll.Action = directResponse(503, MsgAllQuarantined)
	case f.Routable == 0 && f.Asleep > 0:
		catchAll.Action = directResponse(503, MsgFleetAsleep)
	default:
		catchAll.Action = &routev3.Route_Route{Route: workersAction(o)}
		catchAll.ResponseHeadersToAdd = servedByHeaders()
	}
	routes = append(routes, catchAll)

	return &routev3.RouteConfiguration{
		Name: RouteFront,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    "all",
			Domains: []string{"*"},
			Routes:  routes,
		}},
	}
}

// servedByHeaders tag a proxied answer with the serving worker and its weight
// version, read from the chosen endpoint's metadata, and replace any value a
// worker or client put there.
func servedByHeaders() []*corev3.HeaderValueOption {
	h := func(name, key string) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: name, Value: "%UPSTREAM_METADATA(" + metadataNamespace + ":" + key + ")%"},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}
	}
	return []*corev3.HeaderValueOption{h(HeaderWorker, "url"), h(HeaderWeightVersion, "weight_version")}
}

func registryRoute(m *routev3.RouteMatch) *routev3.Route {
	return &routev3.Route{Match: m, Action: &routev3.Route_Route{Route: &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: ClusterRegistry},
		// Fleet-wide calls (weight updates) wait on every worker; the control
		// plane bounds them with its own per-worker timeouts.
		Timeout:     durationpb.New(0),
		IdleTimeout: durationpb.New(0),
	}}}
}

func workersAction(o Options) *routev3.RouteAction {
	a := &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: ClusterWorkers},
		// Zero disables the limit; Envoy's default of 15 s would cut most
		// generations. The idle timeout follows, or a silent minute-long
		// generation would hit the stream idle timeout instead.
		Timeout:     durationpb.New(o.Timeout),
		IdleTimeout: durationpb.New(o.Timeout),
	}
	if o.MaxRetries > 0 {
		a.RetryPolicy = retryPolicy(o)
	}
	return a
}

// retryPolicy retries, on another worker, requests that failed before any
// worker answered: connection refused, refused stream, or a reset (a worker
// that died, or a pooled connection it had closed). An answer, even a 5xx, is
// never retried: the worker ran the request. A request that makes every
// worker crash would be tried MaxRetries+1 times; --max-retries 0 turns
// retries off.
func retryPolicy(o Options) *routev3.RetryPolicy {
	predicate, _ := pack(&previoushostsv3.PreviousHostsPredicate{})
	p := &routev3.RetryPolicy{
		RetryOn:    "connect-failure,refused-stream,reset",
		NumRetries: wrapperspb.UInt32(o.MaxRetries),
		RetryHostPredicate: []*routev3.RetryPolicy_RetryHostPredicate{{
			Name:       "envoy.retry_host_predicates.previous_hosts",
			ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: predicate},
		}},
		HostSelectionRetryMaxAttempts: 5,
	}
	if o.Timeout > 0 {
		p.PerTryTimeout = durationpb.New(o.Timeout)
	}
	return p
}

func directResponse(status uint32, msg string) *routev3.Route_DirectResponse {
	return &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
		Status: status,
		Body:   &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: msg}},
	}}
}
