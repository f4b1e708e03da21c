package translate

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tracingtypev3 "github.com/envoyproxy/go-control-plane/envoy/type/tracing/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/diffrouter/diffusion-router/wire"
)

// TraceServiceName is the service Envoy's spans name.
const TraceServiceName = "diffusion-router"

// SpanTags are the span attributes Envoy takes from a request's headers as
// the filter left them: what a request was, where it went and how long it
// waited in the router's queue. Envoy adds its own (upstream address,
// status, sizes).
var SpanTags = []struct{ Tag, Header string }{
	{"diffusion.worker", wire.HeaderPick},
	{"diffusion.task", wire.HeaderTask},
	{"diffusion.model", wire.HeaderModel},
	{"diffusion.cost", wire.HeaderCost},
	{"diffusion.tenant", wire.HeaderTenant},
	{"diffusion.priority", wire.HeaderPriority},
	{"diffusion.queue_wait_ms", wire.HeaderQueueMs},
}

// tracing is the front listener's tracing: Envoy's OpenTelemetry tracer,
// exporting over OTLP/gRPC to the otlp cluster, a span per request with
// SpanTags, the W3C traceparent passed on to the worker (so its own spans
// join the trace); nil without an OTLP endpoint (no tracing, no cost).
func tracing(o Options) (*hcmv3.HttpConnectionManager_Tracing, error) {
	if o.OTLPAddress == "" {
		return nil, nil
	}
	cfg, err := pack(&tracev3.OpenTelemetryConfig{
		GrpcService: &corev3.GrpcService{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: wire.ClusterOTLP}},
			Timeout:         durationpb.New(o.ConnectTimeout),
		},
		ServiceName: TraceServiceName,
	})
	if err != nil {
		return nil, err
	}
	tags := make([]*tracingtypev3.CustomTag, 0, len(SpanTags))
	for _, t := range SpanTags {
		tags = append(tags, &tracingtypev3.CustomTag{Tag: t.Tag, Type: &tracingtypev3.CustomTag_RequestHeader{
			RequestHeader: &tracingtypev3.CustomTag_Header{Name: t.Header},
		}})
	}
	return &hcmv3.HttpConnectionManager_Tracing{
		// A caller's traceparent decides for its own trace; the rest
		// are sampled at this ratio.
		RandomSampling: &typev3.Percent{Value: 100 * o.TraceSampling},
		CustomTags:     tags,
		Provider: &tracev3.Tracing_Http{
			Name:       "envoy.tracers.opentelemetry",
			ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: cfg},
		},
	}, nil
}

// OTLPCluster is where Envoy sends its spans: the --otlp-endpoint
// collector, over HTTP/2 (gRPC); nil without one.
func OTLPCluster(o Options) (*clusterv3.Cluster, error) {
	if o.OTLPAddress == "" {
		return nil, nil
	}
	c := singleHost(wire.ClusterOTLP, o.OTLPAddress, o.OTLPPort, o.ConnectTimeout)
	if err := speakHTTP2(c, 0); err != nil {
		return nil, err
	}
	return c, nil
}
