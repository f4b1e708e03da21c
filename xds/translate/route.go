package translate

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/diffrouter/diffusion-router/wire"
)

// Messages of the router's own replies; the local-reply config wraps them in
// JSON {"error": ...}.
const (
	MsgNoWorkers           = "no workers are registered; add one with POST /add_worker"
	MsgNoVideoWorkers      = "no video-capable worker is registered (no worker reports a video task type such as T2V, I2V or TI2V in /v1/models)"
	MsgAllQuarantined      = "all workers are quarantined; re-admit one with POST /add_worker or PUT /workers/{worker_id} {\"is_dead\": false} (see GET /workers for the reasons)"
	MsgAllVideoQuarantined = "all video-capable workers are quarantined; re-admit one with POST /add_worker or PUT /workers/{worker_id} {\"is_dead\": false}"
	MsgFleetAsleep         = "the fleet is asleep (memory released); call POST /resume_memory_occupation first"
	MsgUnknownModel        = "no registered worker serves the requested model (see GET /v1/models)"
	MsgBadEscape           = "malformed path: a percent-escape is not two hex digits"
	MsgJobWorkerGone       = "the worker that holds this job is no longer serving (removed or quarantined)"
	MsgJobWorkerAsleep     = "Mapped worker is sleeping (memory released); the job is kept: call POST /resume_memory_occupation, then poll again"
	MsgSeedPostOnly        = "method not allowed: /generate and /generate_video take POST only (list and poll jobs at /v1/videos)"
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
	// AsleepKeys are the job-id keys of active workers whose memory is
	// released: their jobs are still there, the worker wakes later.
	AsleepKeys []string
	// ImageRoutable counts routable workers with an image task type.
	ImageRoutable int
	// Models and VideoModels are the models registered workers serve,
	// ImageModels those image workers serve; sorted.
	Models, VideoModels, ImageModels []string
}

// pool is a set of workers some routes send to, as the route table sees it.
type pool struct {
	workers, quarantined, routable, asleep int
	// noneStatus and noneMsg answer when the pool is empty,
	// quarantinedMsg when all of it is quarantined.
	noneStatus              uint32
	noneMsg, quarantinedMsg string
	models                  []string
	subsetKey               string // the subset the pool is, "" for all workers
}

// routes sends a match to the pool, or answers why it cannot.
func (p pool) routes(o Options, m func() *routev3.RouteMatch, rewrite string) []*routev3.Route {
	switch {
	case p.workers == 0:
		return []*routev3.Route{{Match: m(), Action: directResponse(p.noneStatus, p.noneMsg)}}
	case p.quarantined == p.workers:
		return []*routev3.Route{{Match: m(), Action: directResponse(503, p.quarantinedMsg)}}
	case p.routable == 0 && p.asleep > 0 && !o.HoldWhileAsleep:
		return []*routev3.Route{{Match: m(), Action: directResponse(503, MsgFleetAsleep)}}
	}
	return withRewrite(modelRoutes(o, m, p.models, p.subsetKey), rewrite)
}

// withRewrite makes the routes that reach a worker send it path instead
// of the matched one.
func withRewrite(routes []*routev3.Route, path string) []*routev3.Route {
	if path == "" {
		return routes
	}
	for _, r := range routes {
		if a := r.GetRoute(); a != nil {
			a.PrefixRewrite = path
		}
	}
	return routes
}

// FrontRoutes is the route table of the front listener.
func FrontRoutes(o Options, f Fleet) *routev3.RouteConfiguration {
	routes := make([]*routev3.Route, 0, len(wire.RegistryPaths)+8+3*len(f.Models))
	// A path with a broken percent-escape is refused here, as JSON: the
	// registry's HTTP server would answer it in plain text, a worker who
	// knows how.
	routes = append(routes, &routev3.Route{
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{
			Regex: `.*%([^0-9A-Fa-f].*|[0-9A-Fa-f][^0-9A-Fa-f].*|[0-9A-Fa-f]?)`,
		}}},
		Action: directResponse(400, MsgBadEscape),
	})
	for _, p := range wire.RegistryPaths {
		routes = append(routes, registryRoute(&routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: p}}))
	}
	for _, p := range wire.RegistryPrefixes {
		routes = append(routes, registryRoute(&routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: p}}))
	}
	// The seed router's paths are generations only: any other method
	// would reach a worker's job list (raw, unsigned ids) under a name
	// that promises a new job.
	for _, p := range []string{wire.PathSeedImage, wire.PathSeedVideo} {
		routes = append(routes, &routev3.Route{
			Match: &routev3.RouteMatch{
				PathSpecifier: &routev3.RouteMatch_Path{Path: p},
				Headers: []*routev3.HeaderMatcher{{Name: ":method", InvertMatch: true, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
					StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "POST"}},
				}}},
			},
			Action: directResponse(405, MsgSeedPostOnly),
		})
	}

	if o.Filter != nil {
		// The filter hands the control plane a video create that found
		// no free slot, calls about a job it holds, and job lists
		// (package heldjobs); only the filter sets the header.
		routes = append(routes, registryRoute(&routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
			Headers: []*routev3.HeaderMatcher{present(wire.HeaderHeld)}}))
		// A job whose worker sleeps is not gone: 503 until it wakes.
		for _, key := range f.AsleepKeys {
			for _, prefix := range wire.PinnedPrefixes {
				routes = append(routes, &routev3.Route{
					Match: &routev3.RouteMatch{
						PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: prefix},
						Headers: []*routev3.HeaderMatcher{{Name: wire.HeaderTarget, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
							StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: key}},
						}}},
					},
					Action: directResponse(503, MsgJobWorkerAsleep),
				})
			}
		}
		// The filter checked the job id and named its worker; the subset
		// load balancer picks exactly that worker (or none: 404).
		for _, prefix := range wire.PinnedPrefixes {
			routes = append(routes, &routev3.Route{
				Match: &routev3.RouteMatch{
					PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: prefix},
					Headers:       []*routev3.HeaderMatcher{present(wire.HeaderTarget)},
				},
				Action:               &routev3.Route_Route{Route: workersAction(o)},
				ResponseHeadersToAdd: servedByHeaders(),
			})
		}
	}

	exact := func(p string) func() *routev3.RouteMatch {
		return func() *routev3.RouteMatch {
			return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: p}}
		}
	}
	prefix := func(p string) func() *routev3.RouteMatch {
		return func() *routev3.RouteMatch {
			return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: p}}
		}
	}

	// Video jobs live on video-capable workers only; anything else goes to
	// any worker.
	videos := pool{workers: f.VideoWorkers, quarantined: f.VideoQuarantined, routable: f.VideoRoutable, asleep: f.VideoAsleep,
		noneStatus: 400, noneMsg: MsgNoVideoWorkers, quarantinedMsg: MsgAllVideoQuarantined, models: f.VideoModels, subsetKey: wire.SubsetKeyVideo}
	all := pool{workers: f.Workers, quarantined: f.Quarantined, routable: f.Routable, asleep: f.Asleep,
		noneStatus: 503, noneMsg: MsgNoWorkers, quarantinedMsg: MsgAllQuarantined, models: f.Models}

	routes = append(routes, videos.routes(o, exact(wire.PathVideos), "")...)
	routes = append(routes, videos.routes(o, prefix("/v1/videos/"), "")...)
	routes = append(routes, videos.routes(o, exact(wire.PathSeedVideo), wire.PathVideos)...)

	// Images prefer image workers; with none routable they go to any.
	if f.ImageRoutable > 0 {
		for _, p := range wire.ImagePaths {
			routes = append(routes, modelRoutes(o, exact(p), f.ImageModels, wire.SubsetKeyImage)...)
		}
		routes = append(routes, withRewrite(modelRoutes(o, exact(wire.PathSeedImage), f.ImageModels, wire.SubsetKeyImage), wire.PathImages)...)
	} else {
		routes = append(routes, all.routes(o, exact(wire.PathSeedImage), wire.PathImages)...)
	}
	routes = append(routes, all.routes(o, prefix("/"), "")...)

	return &routev3.RouteConfiguration{
		Name: wire.RouteFront,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    "all",
			Domains: []string{"*"},
			Routes:  routes,
		}},
	}
}

// modelRoutes routes one match to the workers: a request naming a model
// (x-diffusion-model, set by the filter from the body) goes to a worker that
// serves it; one naming a model nobody lists goes, like one naming none, to
// any worker (of the task type subsetKey names, when set), on a route of
// its own name so the filter counts it, or gets 404 with StrictModels.
func modelRoutes(o Options, match func() *routev3.RouteMatch, models []string, subsetKey string) []*routev3.Route {
	routed := func(m *routev3.RouteMatch, fields map[string]*structpb.Value) *routev3.Route {
		a := workersAction(o)
		if len(fields) > 0 {
			a.MetadataMatch = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.lb": {Fields: fields}}}
		}
		return &routev3.Route{Match: m, Action: &routev3.Route_Route{Route: a}, ResponseHeadersToAdd: servedByHeaders()}
	}
	base := func() map[string]*structpb.Value {
		if subsetKey != "" {
			return map[string]*structpb.Value{subsetKey: structpb.NewBoolValue(true)}
		}
		return map[string]*structpb.Value{}
	}
	var out []*routev3.Route
	for _, model := range models {
		m := match()
		m.Headers = []*routev3.HeaderMatcher{{
			Name: wire.HeaderModel,
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Exact{Exact: model},
			}},
		}}
		fields := base()
		fields[wire.SubsetKeyModel] = structpb.NewStringValue(model)
		out = append(out, routed(m, fields))
	}
	unknown := match()
	unknown.Headers = []*routev3.HeaderMatcher{present(wire.HeaderModel)}
	if o.StrictModels {
		out = append(out, &routev3.Route{Match: unknown, Action: directResponse(404, MsgUnknownModel)})
	} else {
		fallback := routed(unknown, base())
		fallback.Name = wire.RouteModelFallback
		out = append(out, fallback)
	}
	return append(out, routed(match(), base()))
}

func present(name string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}
}

// servedByHeaders tag a proxied answer with the serving worker and its weight
// version, read from the chosen endpoint's metadata, and replace any value a
// worker or client put there.
func servedByHeaders() []*corev3.HeaderValueOption {
	h := func(name, key string) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: name, Value: "%UPSTREAM_METADATA(" + wire.MetadataNamespace + ":" + key + ")%"},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}
	}
	return []*corev3.HeaderValueOption{h(wire.HeaderWorker, "url"), h(wire.HeaderWeightVersion, "weight_version")}
}

func registryRoute(m *routev3.RouteMatch) *routev3.Route {
	return &routev3.Route{Match: m, Action: &routev3.Route_Route{Route: &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: wire.ClusterRegistry},
		// Fleet-wide calls (weight updates) wait on every worker; the control
		// plane bounds them with its own per-worker timeouts.
		Timeout:     durationpb.New(0),
		IdleTimeout: durationpb.New(0),
	}}}
}

func workersAction(o Options) *routev3.RouteAction {
	a := &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: wire.ClusterWorkers},
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
