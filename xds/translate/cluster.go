package translate

import (
	"fmt"
	"math"
	"net"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	leastrequestv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	overridehostv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/override_host/v3"
	randomv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/random/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	subsetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/subset/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/diffrouter/diffusion-router/wire"
)

// unlimited stands in for "no cluster-wide cap": the per-worker cap is the one
// that matters, and a cluster-wide one would start rejecting requests (503
// overflow) exactly when a rollout phase queues thousands of generations.
const unlimited = math.MaxUint32

// WorkersCluster builds the one cluster that holds every worker. Its endpoints
// come over EDS. One cluster, not one per capability, because Envoy counts
// active requests per host object: a worker listed in two clusters would be
// seen half-loaded by each. Capability routing uses the subset load balancer,
// whose subsets share the cluster's hosts.
func WorkersCluster(o Options) (*clusterv3.Cluster, error) {
	spec, err := o.Policy.Spec()
	if err != nil {
		return nil, fmt.Errorf("translate: %w", err)
	}
	child, err := lbPolicy(spec.Envoy) // what the filter does not pick
	if err != nil {
		return nil, err
	}
	subset, err := typed("envoy.load_balancing_policies.subset", &subsetv3.Subset{
		// Requests that name no subset (everything but video) may use any worker.
		FallbackPolicy: subsetv3.Subset_ANY_ENDPOINT,
		// A worker's "model" is the list of every id its /v1/models names;
		// a route naming one of them matches.
		ListAsAny: true,
		// No fallback for any selector: a video job never goes to a worker
		// that cannot run it, a job poll never to another worker than the
		// one holding the job, a model never to a worker without it.
		SubsetSelectors: []*subsetv3.Subset_LbSubsetSelector{
			{Keys: []string{wire.SubsetKeyVideo}, FallbackPolicy: subsetv3.Subset_LbSubsetSelector_NO_FALLBACK},
			{Keys: []string{wire.SubsetKeyWorker}, FallbackPolicy: subsetv3.Subset_LbSubsetSelector_NO_FALLBACK, SingleHostPerSubset: true},
			{Keys: []string{wire.SubsetKeyModel}, FallbackPolicy: subsetv3.Subset_LbSubsetSelector_NO_FALLBACK},
			{Keys: []string{wire.SubsetKeyModel, wire.SubsetKeyVideo}, FallbackPolicy: subsetv3.Subset_LbSubsetSelector_NO_FALLBACK},
			{Keys: []string{wire.SubsetKeyImage}, FallbackPolicy: subsetv3.Subset_LbSubsetSelector_NO_FALLBACK},
			{Keys: []string{wire.SubsetKeyImage, wire.SubsetKeyModel}, FallbackPolicy: subsetv3.Subset_LbSubsetSelector_NO_FALLBACK},
		},
		SubsetLbPolicy: &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{{TypedExtensionConfig: child}}},
	})
	if err != nil {
		return nil, err
	}
	if o.FilterPicks() {
		if subset, err = overrideHost(subset); err != nil {
			return nil, err
		}
	}
	tlsSocket, err := typed("envoy.transport_sockets.tls", &tlsv3.UpstreamTlsContext{})
	if err != nil {
		return nil, err
	}
	httpOpts, err := pack(&httpv3.HttpProtocolOptions{
		CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(WorkerIdleTimeout)},
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}},
		}},
	})
	if err != nil {
		return nil, err
	}
	return &clusterv3.Cluster{
		Name:                 wire.ClusterWorkers,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{
			EdsConfig: adsSource(),
		},
		ConnectTimeout:                durationpb.New(o.ConnectTimeout),
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(WorkerReadLimit),
		LoadBalancingPolicy:           &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{{TypedExtensionConfig: subset}}},
		CommonLbConfig: &clusterv3.Cluster_CommonLbConfig{
			// Envoy's default 50 % would, once half the fleet is out, spread
			// traffic over failed and draining workers too.
			HealthyPanicThreshold: &typev3.Percent{Value: 0},
			// Envoy batches health changes for 1 s by default, so a worker
			// that just passed its first health check (or failed one) would
			// stay out of (or in) rotation on the worker threads for up to a
			// second after the admin interface shows the change.
			UpdateMergeWindow: durationpb.New(0),
		},
		CircuitBreakers: &clusterv3.CircuitBreakers{
			Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
				Priority:           corev3.RoutingPriority_DEFAULT,
				MaxConnections:     wrapperspb.UInt32(unlimited),
				MaxPendingRequests: wrapperspb.UInt32(unlimited),
				MaxRequests:        wrapperspb.UInt32(unlimited),
				MaxRetries:         wrapperspb.UInt32(unlimited),
			}},
			// Upstream HTTP/1.1 carries one request per connection, so this is
			// the concurrency per worker (--max-connections).
			PerHostThresholds: []*clusterv3.CircuitBreakers_Thresholds{{
				Priority:       corev3.RoutingPriority_DEFAULT,
				MaxConnections: wrapperspb.UInt32(o.MaxConnections),
			}},
		},
		HealthChecks:     []*corev3.HealthCheck{HealthCheck(o)},
		OutlierDetection: OutlierDetection(o),
		// A worker removed from EDS must stop taking traffic even while it
		// still passes health checks.
		IgnoreHealthOnHostRemoval: true,
		// Envoy closes idle connections to workers before they do
		// (uvicorn's keep-alive is 5 s), so a request is never sent on a
		// connection the worker is closing: that race resets the request
		// and counts as a connection failure of a healthy worker.
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": httpOpts,
		},
		TrackClusterStats: &clusterv3.TrackClusterStats{PerEndpointStats: true},
		TransportSocketMatches: []*clusterv3.Cluster_TransportSocketMatch{{
			Name:            "https-workers",
			Match:           &structpb.Struct{Fields: map[string]*structpb.Value{"tls": structpb.NewBoolValue(true)}},
			TransportSocket: &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tlsSocket.TypedConfig}},
		}},
	}, nil
}

// HealthCheck is Envoy's active check of a worker's /health. sglang-diffusion
// answers it even while generating, so a busy worker passes.
func HealthCheck(o Options) *corev3.HealthCheck {
	return &corev3.HealthCheck{
		Timeout:            durationpb.New(o.HealthCheckTimeout),
		Interval:           durationpb.New(o.HealthCheckInterval),
		UnhealthyThreshold: wrapperspb.UInt32(o.HealthCheckFailureThreshold),
		HealthyThreshold:   wrapperspb.UInt32(1),
		// A worker that is not (or not yet) healthy is checked about once a
		// second whatever the interval: one registered before its server
		// listens (the usual order when a trainer starts the fleet and the
		// router together) is routable a second after it comes up.
		UnhealthyInterval: durationpb.New(recheck(o.HealthCheckInterval)),
		// Envoy probes idle clusters only every 60 s by default; a router
		// between rollout phases is idle, and must still notice a dead
		// worker (and pick up a new one quickly).
		NoTrafficInterval:        durationpb.New(recheck(o.HealthCheckInterval)),
		NoTrafficHealthyInterval: durationpb.New(o.HealthCheckInterval),
		ReuseConnection:          wrapperspb.Bool(true),
		HealthChecker: &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{
			Path: "/health",
		}},
	}
}

func recheck(interval time.Duration) time.Duration { return min(interval, wire.RecheckInterval) }

// OutlierDetection ejects a worker after OutlierConsecutiveFailures failed
// requests in a row. Every default that would let an ejected worker drift
// back is overridden: any fraction of the fleet may be ejected, a passing
// health check does not un-eject, and the ejection lasts long enough for the
// control plane, which watches every Envoy, to quarantine the worker for good.
func OutlierDetection(o Options) *clusterv3.OutlierDetection {
	rule := wire.EjectionAfter(int64(o.OutlierConsecutiveFailures))
	n := wrapperspb.UInt32(uint32(rule.Consecutive5xx))
	all := wrapperspb.UInt32(100)
	off := wrapperspb.UInt32(0)
	return &clusterv3.OutlierDetection{
		// Local-origin failures (connect failures, resets, timeouts) count
		// as gateway failures (502/503/504), like a worker answering one.
		SplitExternalLocalOriginErrors: false,
		// Any 5xx answer, N in a row.
		Consecutive_5Xx:          n,
		EnforcingConsecutive_5Xx: all,
		// A worker that cannot be reached or does not answer is ejected
		// after two such failures in a row, not N (wire.EjectionAfter). A
		// dead worker holds no requests, so under least-request a full scan
		// picks it for every retry (the previous-hosts predicate cannot
		// steer a deterministic pick away): it must leave before a client's
		// retries run out. Two, not one: an ejection is a quarantine for
		// good.
		ConsecutiveGatewayFailure: wrapperspb.UInt32(uint32(rule.ConsecutiveGateway)),
		// Envoy's default of 0 would count gateway failures but never eject.
		EnforcingConsecutiveGatewayFailure: all,
		EnforcingSuccessRate:               off,
		EnforcingFailurePercentage:         off,
		Interval:                           durationpb.New(time.Second),
		BaseEjectionTime:                   durationpb.New(time.Hour),
		MaxEjectionTime:                    durationpb.New(24 * time.Hour),
		// Envoy's default of 10 % would leave most failed workers in rotation.
		MaxEjectionPercent:                     all,
		SuccessfulActiveHealthCheckUnejectHost: wrapperspb.Bool(false),
	}
}

// RegistryCluster points at the control plane's REST API. An IP address is
// static: the control plane's address does not change while it runs. A
// host name (--registry-advertise control-plane:18080, as in compose) is
// resolved by Envoy, and again when it changes (a restarted container).
//
// It speaks HTTP/2 (cleartext, prior knowledge): the filters' callouts,
// one long-poll per request waiting in the router's queue, are streams
// on a connection or two per Envoy worker thread, not a connection each
// (thousands after a burst, left open for the cluster's idle hour).
func RegistryCluster(o Options) (*clusterv3.Cluster, error) {
	var breakers *clusterv3.CircuitBreakers
	if n := o.RegistryMaxRequests; n > 0 {
		breakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			MaxConnections:     wrapperspb.UInt32(n),
			MaxPendingRequests: wrapperspb.UInt32(n),
			MaxRequests:        wrapperspb.UInt32(n),
		}}}
	}
	c := singleHost(wire.ClusterRegistry, o.RegistryAddress, o.RegistryPort, o.ConnectTimeout)
	c.CircuitBreakers = breakers
	if err := speakHTTP2(c, RegistryIdleTimeout); err != nil {
		return nil, err
	}
	return c, nil
}

// speakHTTP2 makes a cluster's upstream protocol HTTP/2 (prior knowledge),
// with an idle timeout for its connections (0: Envoy's default hour).
func speakHTTP2(c *clusterv3.Cluster, idle time.Duration) error {
	po := &httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		}},
	}
	if idle > 0 {
		po.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(idle)}
	}
	h2, err := pack(po)
	if err != nil {
		return err
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2}
	return nil
}

// singleHost is a cluster of one address: static for an IP; a host name
// is resolved by Envoy, and again when it changes.
func singleHost(name, addr string, port uint32, connect time.Duration) *clusterv3.Cluster {
	discovery := clusterv3.Cluster_STATIC
	if net.ParseIP(addr) == nil {
		discovery = clusterv3.Cluster_STRICT_DNS
	}
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: discovery},
		ConnectTimeout:       durationpb.New(connect),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
						Address: socketAddress(addr, port),
					}},
				}},
			}},
		},
	}
}

// overrideHost wraps the subset policy for least-work routing: a request
// the filter named a worker for (wire.HeaderPick, then wire.HeaderPickRetry
// for a retry) goes there; any other request, and a retry beyond the
// filter's two choices, goes through the subset policy as before. Envoy
// does not check the named host's health: the filter picks only from the
// workers the control plane lists as eligible.
func overrideHost(fallback *corev3.TypedExtensionConfig) (*corev3.TypedExtensionConfig, error) {
	return typed("envoy.load_balancing_policies.override_host", &overridehostv3.OverrideHost{
		OverrideHostSources: []*overridehostv3.OverrideHost_OverrideHostSource{
			{Header: wire.HeaderPick},
			{Header: wire.HeaderPickRetry},
		},
		FallbackPolicy: &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{{TypedExtensionConfig: fallback}}},
	})
}

// lbPolicy maps --routing-algorithm to a load-balancing-policy extension.
func lbPolicy(p wire.Policy) (*corev3.TypedExtensionConfig, error) {
	switch p {
	case wire.PolicyLeastRequest:
		// FULL_SCAN: Envoy's default compares two random hosts, which with two
		// workers picks the busier one a quarter of the time.
		return typed("envoy.load_balancing_policies.least_request", &leastrequestv3.LeastRequest{
			SelectionMethod: leastrequestv3.LeastRequest_FULL_SCAN,
		})
	case wire.PolicyRoundRobin:
		return typed("envoy.load_balancing_policies.round_robin", &roundrobinv3.RoundRobin{})
	case wire.PolicyRandom:
		return typed("envoy.load_balancing_policies.random", &randomv3.Random{})
	}
	return nil, fmt.Errorf("translate: unknown policy %q", p)
}

func typed(name string, m proto.Message) (*corev3.TypedExtensionConfig, error) {
	a, err := pack(m)
	if err != nil {
		return nil, fmt.Errorf("translate: pack %s: %w", name, err)
	}
	return &corev3.TypedExtensionConfig{Name: name, TypedConfig: a}, nil
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

func socketAddress(addr string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       addr,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}
