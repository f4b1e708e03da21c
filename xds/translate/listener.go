package translate

import (
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Messages for Envoy's own failures, keyed by the response flag that marks them.
const (
	MsgNoHealthyWorker   = "no healthy worker available: every registered worker is draining, quarantined or failing health checks"
	MsgWorkerUnreachable = "worker unreachable: %LOCAL_REPLY_BODY%"
	MsgWorkerTimeout     = "worker did not answer within the router timeout (--timeout)"
)

// FrontListener is the one port clients talk to. Its routes come over RDS so
// that a fleet change never replaces the listener (which would drain every
// client connection).
func FrontListener(o Options) (*listenerv3.Listener, error) {
	router, err := pack(&routerv3.Router{})
	if err != nil {
		return nil, err
	}
	hcm, err := pack(&hcmv3.HttpConnectionManager{
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		StatPrefix: "front",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: RouteFront,
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router},
		}},
		UseRemoteAddress:          wrapperspb.Bool(true),
		PreserveExternalRequestId: true,
		NormalizePath:             wrapperspb.Bool(true),
		// Worker ids are URL-encoded URLs: %2F must reach the registry as sent.
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_KEEP_UNCHANGED,
		ServerName:                   "diffusion-router",
		LocalReplyConfig:             LocalReplyConfig(),
	})
	if err != nil {
		return nil, err
	}
	return &listenerv3.Listener{
		Name:    ListenerFront,
		Address: socketAddress(o.ListenAddress, o.ListenPort),
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
func LocalReplyConfig() *hcmv3.LocalReplyConfig {
	return &hcmv3.LocalReplyConfig{
		Mappers: []*hcmv3.ResponseMapper{
			{
				Filter:             flagFilter("UH"),
				BodyFormatOverride: jsonError(MsgNoHealthyWorker),
			},
			{
				// Connection failure, reset, termination or protocol error:
				// the worker is there in the config but did not answer.
				Filter:             flagFilter("UF", "UC", "UR", "URX", "UPE"),
				StatusCode:         wrapperspb.UInt32(502),
				BodyFormatOverride: jsonError(MsgWorkerUnreachable),
			},
			{
				Filter:             flagFilter("UT"),
				BodyFormatOverride: jsonError(MsgWorkerTimeout),
			},
		},
		BodyFormat: jsonError("%LOCAL_REPLY_BODY%"),
	}
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
