package translate

import (
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	celv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	headertometadatav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_to_metadata/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	wasmfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/diffrouter/diffusion-router/wire"
)

// Messages for Envoy's own failures, keyed by the response flag that marks them.
const (
	MsgNoHealthyWorker   = "no healthy worker available: every registered worker is draining, quarantined or failing health checks"
	MsgWorkerUnreachable = "worker unreachable: %LOCAL_REPLY_BODY%"
	// MsgControlPlaneAway: a registry call (/health, /workers, ...) whose
	// control plane does not answer. Requests to workers are still routed.
	MsgControlPlaneAway = "control plane unreachable: the router's registry API is down or restarting; generation requests are still routed to the workers Envoy last knew"
	MsgWorkerTimeout    = "worker did not answer within the router timeout (--timeout)"
	MsgMalformedRequest = "malformed request: the request line or headers cannot be parsed (%RESPONSE_CODE_DETAILS%)"
	MsgMalformedPath    = "malformed path: it cannot be normalised (a NUL or control character, or '..' above the root)"
)

// FrontListener is the one port clients talk to. Its routes come over RDS so
// that a fleet change never replaces the listener (which would drain every
// client connection).
func FrontListener(o Options) (*listenerv3.Listener, error) {
	router, err := pack(&routerv3.Router{})
	if err != nil {
		return nil, err
	}
	filters, err := tagFilters(o)
	if err != nil {
		return nil, err
	}
	replies, err := LocalReplyConfig()
	if err != nil {
		return nil, err
	}
	traces, err := tracing(o)
	if err != nil {
		return nil, err
	}
	hcm, err := pack(&hcmv3.HttpConnectionManager{
		Tracing:    traces,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		StatPrefix: "front",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: wire.RouteFront,
		}},
		HttpFilters: append(filters, &hcmv3.HttpFilter{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router},
		}),
		UseRemoteAddress:          wrapperspb.Bool(true),
		PreserveExternalRequestId: true,
		// Clients get the id back to correlate with worker and router logs.
		AlwaysSetRequestIdInResponse: true,
		NormalizePath:                wrapperspb.Bool(true),
		// //add_worker and /v1//videos/{id} must not slip past the
		// registry routes or the filter's job-id check: routes and the
		// filter see the path with slashes merged.
		MergeSlashes: true,
		// Worker ids are URL-encoded URLs: %2F must reach the registry as sent.
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_KEEP_UNCHANGED,
		ServerName:                   "diffusion-router",
		LocalReplyConfig:             replies,
	})
	if err != nil {
		return nil, err
	}
	var reusePort *wrapperspb.BoolValue
	if o.ExclusivePort {
		// Envoy's default (SO_REUSEPORT on Linux) lets a second Envoy bind
		// a port the first still serves, and the kernel then splits the
		// clients between two configurations. Off, the second one fails.
		reusePort = wrapperspb.Bool(false)
	}
	return &listenerv3.Listener{
		Name:                          wire.ListenerFront,
		Address:                       socketAddress(o.ListenAddress, o.ListenPort),
		EnableReusePort:               reusePort,
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(FrontBufferLimit),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm},
			}},
		}},
	}, nil
}

// LocalReplyConfig makes every reply Envoy generates itself JSON
// {"error": ...}, as clients of the Python routers expect, and gives
// upstream failures the status codes those routers use: 502 for a worker that
// cannot be reached, 503 when no worker can serve.
func LocalReplyConfig() (*hcmv3.LocalReplyConfig, error) {
	// A path Envoy cannot normalise (a NUL, a ".." past the root) is
	// refused before any filter runs, with an empty body and no flag to
	// match on: only its response details tell it apart.
	badPath, err := celFilter("response.code_details == 'path_normalization_failed'")
	if err != nil {
		return nil, err
	}
	registryUpstream, err := celFilter("xds.cluster_name == '" + wire.ClusterRegistry + "'")
	if err != nil {
		return nil, err
	}
	// Connection failure, reset, termination or protocol error upstream.
	upstreamFailed := flagFilter("UF", "UC", "UR", "URX", "UPE")
	return &hcmv3.LocalReplyConfig{
		Mappers: []*hcmv3.ResponseMapper{
			{
				// A pinned job poll whose worker left the fleet.
				Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_AndFilter{AndFilter: &accesslogv3.AndFilter{
					Filters: []*accesslogv3.AccessLogFilter{
						{FilterSpecifier: &accesslogv3.AccessLogFilter_HeaderFilter{HeaderFilter: &accesslogv3.HeaderFilter{Header: present(wire.HeaderTarget)}}},
						flagFilter("UH"),
					},
				}}},
				StatusCode:         wrapperspb.UInt32(404),
				BodyFormatOverride: jsonError(MsgJobWorkerGone),
			},
			{
				Filter:             flagFilter("UH"),
				BodyFormatOverride: jsonError(MsgNoHealthyWorker),
			},
			{
				// Envoy refuses a request it cannot parse (bad headers)
				// with an empty body.
				Filter:             flagFilter("DPE"),
				BodyFormatOverride: jsonError(MsgMalformedRequest),
			},
			{
				Filter:             badPath,
				BodyFormatOverride: jsonError(MsgMalformedPath),
			},
			{
				// The same failures on the way to the control plane: say
				// so, not "worker unreachable" (the workers may be fine).
				Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_AndFilter{AndFilter: &accesslogv3.AndFilter{
					Filters: []*accesslogv3.AccessLogFilter{registryUpstream, upstreamFailed},
				}}},
				StatusCode:         wrapperspb.UInt32(503),
				BodyFormatOverride: jsonError(MsgControlPlaneAway),
			},
			{
				// Connection failure, reset, termination or protocol error:
				// the worker is there in the config but did not answer.
				Filter:             upstreamFailed,
				StatusCode:         wrapperspb.UInt32(502),
				BodyFormatOverride: jsonError(MsgWorkerUnreachable),
			},
			{
				Filter:             flagFilter("UT"),
				BodyFormatOverride: jsonError(MsgWorkerTimeout),
			},
		},
		BodyFormat: jsonError("%LOCAL_REPLY_BODY%"),
	}, nil
}

// celFilter matches a local reply by a CEL expression over Envoy's
// attributes.
func celFilter(expr string) (*accesslogv3.AccessLogFilter, error) {
	cel, err := pack(&celv3.ExpressionFilter{Expression: expr})
	if err != nil {
		return nil, err
	}
	return &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ExtensionFilter{ExtensionFilter: &accesslogv3.ExtensionFilter{
		Name:       "envoy.access_loggers.extension_filters.cel",
		ConfigType: &accesslogv3.ExtensionFilter_TypedConfig{TypedConfig: cel},
	}}}, nil
}

func flagFilter(flags ...string) *accesslogv3.AccessLogFilter {
	return &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ResponseFlagFilter{
		ResponseFlagFilter: &accesslogv3.ResponseFlagFilter{Flags: flags},
	}}
}

func jsonError(msg string) *corev3.SubstitutionFormatString {
	return &corev3.SubstitutionFormatString{Format: &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: &structpb.Struct{
		Fields: map[string]*structpb.Value{
			"error":      structpb.NewStringValue(msg),
			"request_id": structpb.NewStringValue("%REQ(X-REQUEST-ID)%"),
		},
	}}}
}

func envVars(keys []string) *wasmv3.EnvironmentVariables {
	if len(keys) == 0 {
		return nil
	}
	return &wasmv3.EnvironmentVariables{HostEnvKeys: keys}
}

// tagFilters are the HTTP filters before the router: the Wasm tagger, then
// header-to-metadata, which turns the worker the tagger named for a job
// (x-diffusion-target) into load-balancer metadata. Without the filter
// there are none: a client-sent x-diffusion-target must never steer.
func tagFilters(o Options) ([]*hcmv3.HttpFilter, error) {
	if o.Filter == nil {
		return nil, nil
	}
	cfg, err := pack(wrapperspb.String(o.Filter.Config))
	if err != nil {
		return nil, err
	}
	wasm, err := pack(&wasmfilterv3.Wasm{Config: &wasmv3.PluginConfig{
		Name:   "diffusion-tagger",
		RootId: "diffusion-tagger",
		Vm: &wasmv3.PluginConfig_VmConfig{VmConfig: &wasmv3.VmConfig{
			VmId:    "diffusion-tagger",
			Runtime: "envoy.wasm.runtime.v8",
			Code: &corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Local{Local: &corev3.DataSource{
				Specifier: &corev3.DataSource_Filename{Filename: o.Filter.Path},
			}}},
			EnvironmentVariables: envVars(o.Filter.HostEnvKeys),
		}},
		Configuration: cfg,
		// A VM that fails must not take traffic down with it.
		FailurePolicy: wasmv3.FailurePolicy_FAIL_OPEN,
		// The plugin holds request headers (StopIteration) while it reads a
		// small body. Without this Envoy turns that into "stop all", stops
		// feeding it the body, and the request stalls.
		AllowOnHeadersStopIteration: wrapperspb.Bool(true),
	}})
	if err != nil {
		return nil, err
	}
	h2m, err := pack(&headertometadatav3.Config{RequestRules: []*headertometadatav3.Config_Rule{{
		Header: wire.HeaderTarget,
		OnHeaderPresent: &headertometadatav3.Config_KeyValuePair{
			MetadataNamespace: "envoy.lb", Key: wire.SubsetKeyWorker, Type: headertometadatav3.Config_STRING,
		},
	}}})
	if err != nil {
		return nil, err
	}
	return []*hcmv3.HttpFilter{
		{Name: "envoy.filters.http.wasm", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: wasm}},
		{Name: "envoy.filters.http.header_to_metadata", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: h2m}},
	}, nil
}
