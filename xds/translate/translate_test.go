package translate

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	leastrequestv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	overridehostv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/override_host/v3"
	randomv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/random/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	subsetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/subset/v3"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/diffrouter/diffusion-router/registry"

	"github.com/diffrouter/diffusion-router/wire"
)

func testOptions() Options {
	return Options{
		ListenAddress:               "0.0.0.0",
		ListenPort:                  30080,
		Policy:                      wire.PolicyLeastRequest,
		MaxConnections:              100,
		MaxRetries:                  2,
		ConnectTimeout:              5 * time.Second,
		HealthCheckInterval:         10 * time.Second,
		HealthCheckTimeout:          5 * time.Second,
		HealthCheckFailureThreshold: 3,
		RegistryAddress:             "127.0.0.1",
		RegistryPort:                40000,
		OutlierConsecutiveFailures:  5,
	}
}

func worker(t *testing.T, rawURL, addr string, state registry.State, taskTypes ...string) registry.Worker {
	t.Helper()
	u, err := registry.ParseWorkerURL(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return registry.Worker{URL: u, Address: addr, State: state, Caps: registry.Capabilities{Known: len(taskTypes) > 0, TaskTypes: taskTypes}}
}

func assertProtoEqual(t *testing.T, got, want proto.Message) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Fatalf("proto mismatch\n got: %s\nwant: %s", prototext.Format(got), prototext.Format(want))
	}
}

// childPolicy digs the per-subset policy out of the workers cluster.
func childPolicy(t *testing.T, c *clusterv3.Cluster) proto.Message {
	t.Helper()
	cfg := c.GetLoadBalancingPolicy().GetPolicies()[0].GetTypedExtensionConfig()
	if cfg.GetName() != "envoy.load_balancing_policies.subset" {
		t.Fatalf("outer policy = %q, want the subset policy", cfg.GetName())
	}
	var s subsetv3.Subset
	if err := cfg.GetTypedConfig().UnmarshalTo(&s); err != nil {
		t.Fatal(err)
	}
	if s.GetFallbackPolicy() != subsetv3.Subset_ANY_ENDPOINT {
		t.Errorf("fallback = %v, want ANY_ENDPOINT", s.GetFallbackPolicy())
	}
	var keys []string
	for _, sel := range s.GetSubsetSelectors() {
		keys = append(keys, strings.Join(sel.GetKeys(), "+"))
		if sel.GetFallbackPolicy() != subsetv3.Subset_LbSubsetSelector_NO_FALLBACK {
			t.Errorf("selector %v falls back: a request could reach a worker that cannot serve it", sel.GetKeys())
		}
	}
	if want := []string{"video", "worker", "model", "model+video", "image", "image+model"}; !slices.Equal(keys, want) {
		t.Errorf("selectors = %v, want %v", keys, want)
	}
	m, err := s.GetSubsetLbPolicy().GetPolicies()[0].GetTypedExtensionConfig().GetTypedConfig().UnmarshalNew()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestWorkersClusterPolicy(t *testing.T) {
	tests := []struct {
		policy wire.Policy
		want   proto.Message
	}{
		{wire.PolicyLeastRequest, &leastrequestv3.LeastRequest{SelectionMethod: leastrequestv3.LeastRequest_FULL_SCAN}},
		{wire.PolicyRoundRobin, &roundrobinv3.RoundRobin{}},
		{wire.PolicyRandom, &randomv3.Random{}},
	}
	for _, tt := range tests {
		t.Run(string(tt.policy), func(t *testing.T) {
			o := testOptions()
			o.Policy = tt.policy
			c, err := WorkersCluster(o)
			if err != nil {
				t.Fatal(err)
			}
			assertProtoEqual(t, childPolicy(t, c), tt.want)
			if got := c.GetCommonLbConfig().GetHealthyPanicThreshold().GetValue(); got != 0 {
				t.Errorf("panic threshold = %v, want 0", got)
			}
			if !c.GetIgnoreHealthOnHostRemoval() {
				t.Error("ignore_health_on_host_removal is off")
			}
			od := c.GetOutlierDetection()
			if od.GetConsecutive_5Xx().GetValue() != 5 || od.GetEnforcingConsecutiveGatewayFailure().GetValue() != 100 ||
				od.GetMaxEjectionPercent().GetValue() != 100 || od.GetSuccessfulActiveHealthCheckUnejectHost().GetValue() {
				t.Errorf("outlier detection lets ejected workers back: %v", od)
			}
			if got := c.GetCircuitBreakers().GetPerHostThresholds()[0].GetMaxConnections().GetValue(); got != 100 {
				t.Errorf("per-host max connections = %d, want 100", got)
			}
		})
	}
	o := testOptions()
	o.Policy = "fastest"
	if _, err := WorkersCluster(o); err == nil {
		t.Fatal("unknown policy accepted")
	}
}

func TestHealthCheckFollowsFlags(t *testing.T) {
	tests := []struct {
		interval, recheck time.Duration
	}{
		// Workers not (yet) healthy are checked about once a second,
		// whatever the interval; never less often than the interval.
		{2 * time.Second, time.Second},
		{time.Hour, time.Second},
		{500 * time.Millisecond, 500 * time.Millisecond},
	}
	for _, tt := range tests {
		o := testOptions()
		o.HealthCheckInterval = tt.interval
		o.HealthCheckFailureThreshold = 7
		want := &corev3.HealthCheck{
			Timeout:                  durationpb.New(5 * time.Second),
			Interval:                 durationpb.New(tt.interval),
			UnhealthyThreshold:       wrapUint(7),
			HealthyThreshold:         wrapUint(1),
			UnhealthyInterval:        durationpb.New(tt.recheck),
			NoTrafficInterval:        durationpb.New(tt.recheck),
			NoTrafficHealthyInterval: durationpb.New(tt.interval),
			ReuseConnection:          wrapBool(true),
			HealthChecker:            &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/health"}},
		}
		assertProtoEqual(t, HealthCheck(o), want)
	}
}

// A job whose worker sleeps answers 503 (it is kept), not 404.
func TestAsleepWorkersJobsAre503(t *testing.T) {
	o := testOptions()
	o.Filter = &FilterOptions{Path: "/f.wasm", Config: "{}"}
	rc := FrontRoutes(o, Fleet{Workers: 1, Asleep: 1, AsleepKeys: []string{"k1"}})
	found := 0
	for _, r := range rc.GetVirtualHosts()[0].GetRoutes() {
		hs := r.GetMatch().GetHeaders()
		if len(hs) == 1 && hs[0].GetName() == wire.HeaderTarget && hs[0].GetStringMatch().GetExact() == "k1" {
			if r.GetDirectResponse().GetStatus() != 503 {
				t.Fatalf("asleep worker's job route: %v", r)
			}
			found++
		}
	}
	if found != 2 {
		t.Fatalf("%d routes for the asleep worker's jobs, want 2 (videos, images)", found)
	}
}

func TestWorkersLoadAssignment(t *testing.T) {
	tests := []struct {
		name       string
		workers    []registry.Worker
		wantHosts  []string
		wantHealth []corev3.HealthStatus
		wantVideo  []bool
		wantTLS    []bool
	}{
		{name: "empty fleet"},
		{
			name: "states map to health or absence",
			workers: []registry.Worker{
				worker(t, "http://127.0.0.1:1", "127.0.0.1", registry.StateActive, "T2I"),
				worker(t, "http://127.0.0.1:2", "127.0.0.1", registry.StateDraining, "T2V"),
				worker(t, "http://127.0.0.1:3", "127.0.0.1", registry.StatePending),
				worker(t, "http://127.0.0.1:4", "127.0.0.1", registry.StateQuarantined),
			},
			wantHosts:  []string{"127.0.0.1:1", "127.0.0.1:2"},
			wantHealth: []corev3.HealthStatus{corev3.HealthStatus_HEALTHY, corev3.HealthStatus_DRAINING},
			wantVideo:  []bool{false, true},
			wantTLS:    []bool{false, false},
		},
		{
			name:       "https worker selects the TLS transport socket",
			workers:    []registry.Worker{worker(t, "https://gpu.example:8443", "10.1.2.3", registry.StateActive, "TI2V")},
			wantHosts:  []string{"gpu.example:8443"},
			wantHealth: []corev3.HealthStatus{corev3.HealthStatus_HEALTHY},
			wantVideo:  []bool{true},
			wantTLS:    []bool{true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cla := WorkersLoadAssignment(tt.workers)
			if cla.GetClusterName() != wire.ClusterWorkers {
				t.Fatalf("cluster name = %q", cla.GetClusterName())
			}
			var lbs []*endpointv3.LbEndpoint
			for _, l := range cla.GetEndpoints() {
				lbs = append(lbs, l.GetLbEndpoints()...)
			}
			if len(lbs) != len(tt.wantHosts) {
				t.Fatalf("%d endpoints, want %d", len(lbs), len(tt.wantHosts))
			}
			for i, lb := range lbs {
				if got := lb.GetEndpoint().GetHostname(); got != tt.wantHosts[i] {
					t.Errorf("endpoint %d hostname = %q, want %q", i, got, tt.wantHosts[i])
				}
				if lb.GetHealthStatus() != tt.wantHealth[i] {
					t.Errorf("endpoint %d health = %v, want %v", i, lb.GetHealthStatus(), tt.wantHealth[i])
				}
				if got := lb.GetMetadata().GetFilterMetadata()["envoy.lb"].GetFields()[wire.SubsetKeyVideo].GetBoolValue(); got != tt.wantVideo[i] {
					t.Errorf("endpoint %d video = %v, want %v", i, got, tt.wantVideo[i])
				}
				_, tls := lb.GetMetadata().GetFilterMetadata()[transportSocketMatchKey]
				if tls != tt.wantTLS[i] {
					t.Errorf("endpoint %d tls match = %v, want %v", i, tls, tt.wantTLS[i])
				}
			}
		})
	}
}

func TestFrontRoutes(t *testing.T) {
	tests := []struct {
		name  string
		fleet Fleet
		// status of the direct response for the catch-all and the video route; 0 = routed to workers
		wantCatchAll, wantVideo uint32
	}{
		{name: "no workers", fleet: Fleet{}, wantCatchAll: 503, wantVideo: 400},
		{name: "image workers only", fleet: Fleet{Workers: 2, Routable: 2}, wantCatchAll: 0, wantVideo: 400},
		{name: "video workers", fleet: Fleet{Workers: 2, VideoWorkers: 1, Routable: 2, VideoRoutable: 1}, wantCatchAll: 0, wantVideo: 0},
		{name: "fleet asleep", fleet: Fleet{Workers: 2, VideoWorkers: 1, Asleep: 2, VideoAsleep: 1}, wantCatchAll: 503, wantVideo: 503},
		{name: "draining only is routed (to 503 no healthy upstream)", fleet: Fleet{Workers: 1}, wantCatchAll: 0, wantVideo: 400},
		{name: "all quarantined", fleet: Fleet{Workers: 2, VideoWorkers: 1, Quarantined: 2, VideoQuarantined: 1}, wantCatchAll: 503, wantVideo: 503},
		{name: "video workers quarantined", fleet: Fleet{Workers: 2, VideoWorkers: 1, Quarantined: 1, VideoQuarantined: 1, Routable: 1}, wantCatchAll: 0, wantVideo: 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := FrontRoutes(testOptions(), tt.fleet)
			routes := rc.GetVirtualHosts()[0].GetRoutes()
			byMatch := map[string]*routev3.Route{}
			for _, r := range routes {
				if len(r.GetMatch().GetHeaders()) > 0 {
					continue
				}
				key := r.GetMatch().GetPath() + r.GetMatch().GetPrefix()
				byMatch[key] = r
			}
			for _, p := range wire.RegistryPaths {
				if byMatch[p].GetRoute().GetCluster() != wire.ClusterRegistry {
					t.Errorf("%s does not go to the registry", p)
				}
			}
			if byMatch["/workers/"].GetRoute().GetCluster() != wire.ClusterRegistry {
				t.Error("/workers/ prefix does not go to the registry")
			}
			if last := routes[len(routes)-1]; last.GetMatch().GetPrefix() != "/" {
				t.Errorf("catch-all is not last: %v", last.GetMatch())
			}
			check := func(key string, want uint32, video bool) {
				r := byMatch[key]
				if want != 0 {
					if got := r.GetDirectResponse().GetStatus(); got != want {
						t.Errorf("%s: direct status = %d, want %d", key, got, want)
					}
					return
				}
				a := r.GetRoute()
				if a.GetCluster() != wire.ClusterWorkers {
					t.Fatalf("%s: cluster = %q", key, a.GetCluster())
				}
				if a.GetTimeout() == nil || a.GetTimeout().AsDuration() != 0 {
					t.Errorf("%s: timeout = %v, want explicit 0 (none)", key, a.GetTimeout())
				}
				gotVideo := a.GetMetadataMatch().GetFilterMetadata()["envoy.lb"].GetFields()[wire.SubsetKeyVideo].GetBoolValue()
				if gotVideo != video {
					t.Errorf("%s: video subset = %v, want %v", key, gotVideo, video)
				}
				if a.GetRetryPolicy().GetNumRetries().GetValue() != 2 {
					t.Errorf("%s: retries = %v", key, a.GetRetryPolicy())
				}
			}
			check("/", tt.wantCatchAll, false)
			check("/v1/videos", tt.wantVideo, true)
			check("/v1/videos/", tt.wantVideo, true)
		})
	}
}

func TestTimeoutFlagReachesRoutes(t *testing.T) {
	o := testOptions()
	o.Timeout = 90 * time.Second
	a := FrontRoutes(o, Fleet{Workers: 1}).GetVirtualHosts()[0].GetRoutes()
	last := a[len(a)-1].GetRoute()
	if last.GetTimeout().AsDuration() != 90*time.Second || last.GetIdleTimeout().AsDuration() != 90*time.Second {
		t.Fatalf("timeout %v idle %v, want 90s", last.GetTimeout(), last.GetIdleTimeout())
	}
	if last.GetRetryPolicy().GetPerTryTimeout().AsDuration() != 90*time.Second {
		t.Fatalf("per-try timeout = %v", last.GetRetryPolicy().GetPerTryTimeout())
	}
	o.MaxRetries = 0
	a = FrontRoutes(o, Fleet{Workers: 1}).GetVirtualHosts()[0].GetRoutes()
	if a[len(a)-1].GetRoute().GetRetryPolicy() != nil {
		t.Fatal("retry policy present with --max-retries 0")
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Options)
	}{
		{"no listen address", func(o *Options) { o.ListenAddress = "" }},
		{"port zero", func(o *Options) { o.ListenPort = 0 }},
		{"negative timeout", func(o *Options) { o.Timeout = -time.Second }},
		{"zero connections", func(o *Options) { o.MaxConnections = 0 }},
		{"zero threshold", func(o *Options) { o.HealthCheckFailureThreshold = 0 }},
		{"zero outlier failures", func(o *Options) { o.OutlierConsecutiveFailures = 0 }},
		{"zero interval", func(o *Options) { o.HealthCheckInterval = 0 }},
		{"bad policy", func(o *Options) { o.Policy = "x" }},
		{"no registry", func(o *Options) { o.RegistryPort = 0 }},
	}
	if err := testOptions().Validate(); err != nil {
		t.Fatalf("valid options rejected: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions()
			tt.mutate(&o)
			if err := o.Validate(); err == nil {
				t.Fatal("accepted")
			}
			if _, err := Build(registry.Snapshot{}, o); err == nil {
				t.Fatal("Build accepted invalid options")
			}
		})
	}
}

func wrapUint(v uint32) *wrapperspb.UInt32Value { return wrapperspb.UInt32(v) }
func wrapBool(v bool) *wrapperspb.BoolValue     { return wrapperspb.Bool(v) }

// TestBuildIsDeterministic: the same input must encode to the same bytes, or
// the xDS versions (content hashes) change on every publish and Envoy
// replaces an unchanged listener, draining client connections.
func TestBuildIsDeterministic(t *testing.T) {
	snap := registry.Snapshot{Workers: []registry.Worker{worker(t, "http://127.0.0.1:1", "127.0.0.1", registry.StateActive, "T2I")}}
	var first [][]byte
	for i := range 20 {
		res, err := Build(snap, testOptions())
		if err != nil {
			t.Fatal(err)
		}
		var enc [][]byte
		for _, m := range []proto.Message{res.Clusters[0], res.Clusters[1], res.Endpoints[0], res.Listeners[0], res.Routes[0]} {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			enc = append(enc, b)
		}
		if i == 0 {
			first = enc
			continue
		}
		for j := range enc {
			if !bytes.Equal(enc[j], first[j]) {
				t.Fatalf("build %d: resource %d encodes differently", i, j)
			}
		}
	}
}

// TestModelRoutes: a request naming a served model goes to that model's
// subset, one naming an unknown model gets 404, one naming none any worker.
func TestModelRoutes(t *testing.T) {
	for _, tt := range []struct {
		strict bool
		want   []string
	}{
		// A name nobody lists goes to any worker (sglang ignores it), on
		// the fallback route the filter counts; strict mode answers 404.
		{false, []string{"flux->model:flux", "qwen->model:qwen", "present->model:(model-fallback)", "any->model:"}},
		{true, []string{"flux->model:flux", "qwen->model:qwen", "present->404", "any->model:"}},
	} {
		o := testOptions()
		o.StrictModels = tt.strict
		if got := catchAllRoutes(o); !slices.Equal(got, tt.want) {
			t.Errorf("strict %v: catch-all routes = %v, want %v", tt.strict, got, tt.want)
		}
	}
}

func catchAllRoutes(o Options) []string {
	rc := FrontRoutes(o, Fleet{Workers: 2, Routable: 2, Models: []string{"flux", "qwen"}})
	var got []string
	for _, r := range rc.GetVirtualHosts()[0].GetRoutes() {
		if r.GetMatch().GetPrefix() != "/" {
			continue
		}
		desc := "any"
		if hs := r.GetMatch().GetHeaders(); len(hs) == 1 {
			if hs[0].GetPresentMatch() {
				desc = "present"
			} else {
				desc = hs[0].GetStringMatch().GetExact()
			}
		}
		if d := r.GetDirectResponse(); d != nil {
			desc += fmt.Sprintf("->%d", d.GetStatus())
		} else {
			m := r.GetRoute().GetMetadataMatch().GetFilterMetadata()["envoy.lb"].GetFields()[wire.SubsetKeyModel].GetStringValue()
			desc += "->model:" + m
			if r.GetName() != "" {
				desc += "(" + r.GetName() + ")"
			}
		}
		got = append(got, desc)
	}
	return got
}

func TestFilterRoutesAndListener(t *testing.T) {
	o := testOptions()
	if len(FrontRoutes(o, Fleet{Workers: 1, Routable: 1}).GetVirtualHosts()[0].GetRoutes()) == 0 {
		t.Fatal("no routes")
	}
	pinned := func(rc *routev3.RouteConfiguration) int {
		n := 0
		for _, r := range rc.GetVirtualHosts()[0].GetRoutes() {
			for _, h := range r.GetMatch().GetHeaders() {
				if h.GetName() == wire.HeaderTarget {
					n++
				}
			}
		}
		return n
	}
	if n := pinned(FrontRoutes(o, Fleet{Workers: 1, Routable: 1})); n != 0 {
		t.Fatalf("%d pinned routes without the filter: a client header could steer", n)
	}
	o.Filter = &FilterOptions{Path: "/x.wasm", Config: `{"secret":"s"}`}
	if n := pinned(FrontRoutes(o, Fleet{Workers: 1, Routable: 1})); n != 2 {
		t.Fatalf("%d pinned routes with the filter, want 2 (videos and images)", n)
	}
	l, err := FrontListener(o)
	if err != nil {
		t.Fatal(err)
	}
	var hcm hcmv3.HttpConnectionManager
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range hcm.GetHttpFilters() {
		names = append(names, f.GetName())
	}
	if want := []string{"envoy.filters.http.wasm", "envoy.filters.http.header_to_metadata", "envoy.filters.http.router"}; !slices.Equal(names, want) {
		t.Fatalf("filters = %v, want %v", names, want)
	}
}

// Image requests prefer image workers while one is routable, and go to any
// worker when none is.
func TestImageRoutesPreferImageWorkers(t *testing.T) {
	imageSubset := func(rc *routev3.RouteConfiguration, path string) (found, restricted bool) {
		for _, r := range rc.GetVirtualHosts()[0].GetRoutes() {
			if r.GetMatch().GetPath() != path || len(r.GetMatch().GetHeaders()) > 0 {
				continue
			}
			f := r.GetRoute().GetMetadataMatch().GetFilterMetadata()["envoy.lb"].GetFields()
			return true, f[wire.SubsetKeyImage].GetBoolValue()
		}
		return false, false
	}
	tests := []struct {
		name  string
		fleet Fleet
		want  bool
	}{
		{"image and video workers", Fleet{Workers: 2, Routable: 2, VideoWorkers: 1, VideoRoutable: 1, ImageRoutable: 1}, true},
		{"only video workers", Fleet{Workers: 1, Routable: 1, VideoWorkers: 1, VideoRoutable: 1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := FrontRoutes(testOptions(), tt.fleet)
			for _, p := range wire.ImagePaths {
				found, restricted := imageSubset(rc, p)
				if found != tt.want || restricted != tt.want {
					t.Errorf("%s: own route %v, image subset %v; want %v", p, found, restricted, tt.want)
				}
			}
		})
	}
	w := worker(t, "http://127.0.0.1:9", "127.0.0.1", registry.StateActive, "T2I")
	if f := FleetOf([]registry.Worker{w}); f.ImageRoutable != 1 {
		t.Fatalf("a T2I worker is not counted as an image worker: %+v", f)
	}
}

// What the Wasm filter may hold plus one read from a worker must fit the
// front listener's buffer, or Envoy cuts held answers.
func TestBufferLimitsLeaveRoomForHeldBodies(t *testing.T) {
	if need := wire.MaxHeldBytes + WorkerReadLimit + 16<<10; FrontBufferLimit <= need {
		t.Fatalf("front buffer limit %d, need more than %d", FrontBufferLimit, need)
	}
	l, err := FrontListener(testOptions())
	if err != nil {
		t.Fatal(err)
	}
	c, err := WorkersCluster(testOptions())
	if err != nil {
		t.Fatal(err)
	}
	if l.GetPerConnectionBufferLimitBytes().GetValue() != FrontBufferLimit || c.GetPerConnectionBufferLimitBytes().GetValue() != WorkerReadLimit {
		t.Fatalf("limits not set: listener %v, cluster %v", l.GetPerConnectionBufferLimitBytes(), c.GetPerConnectionBufferLimitBytes())
	}
}

// TestLeastWorkCluster: least-work wraps the subset policy (least-request
// inside) in override_host reading the filter's two choices; without the
// filter it is refused.
func TestLeastWorkCluster(t *testing.T) {
	o := testOptions()
	o.Policy = wire.PolicyLeastWork
	if err := o.Validate(); err == nil {
		t.Fatal("least-work without the filter validated")
	}
	o.Filter = &FilterOptions{Path: "/f.wasm", Config: "{}"}
	c, err := WorkersCluster(o)
	if err != nil {
		t.Fatal(err)
	}
	outer := c.GetLoadBalancingPolicy().GetPolicies()[0].GetTypedExtensionConfig()
	if outer.GetName() != "envoy.load_balancing_policies.override_host" {
		t.Fatalf("outer policy = %q", outer.GetName())
	}
	var oh overridehostv3.OverrideHost
	if err := outer.GetTypedConfig().UnmarshalTo(&oh); err != nil {
		t.Fatal(err)
	}
	var headers []string
	for _, s := range oh.GetOverrideHostSources() {
		headers = append(headers, s.GetHeader())
	}
	if want := []string{wire.HeaderPick, wire.HeaderPickRetry}; !slices.Equal(headers, want) {
		t.Fatalf("override sources = %v, want %v", headers, want)
	}
	inner := &clusterv3.Cluster{LoadBalancingPolicy: oh.GetFallbackPolicy()}
	assertProtoEqual(t, childPolicy(t, inner), &leastrequestv3.LeastRequest{SelectionMethod: leastrequestv3.LeastRequest_FULL_SCAN})
}

// TestRegistryClusterResolvesNames: an IP address is a static endpoint; a
// host name (compose's control-plane service) is resolved by Envoy, which
// rejects a static cluster with a name in it.
func TestRegistryClusterResolvesNames(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want clusterv3.Cluster_DiscoveryType
	}{
		{"127.0.0.1", clusterv3.Cluster_STATIC},
		{"::1", clusterv3.Cluster_STATIC},
		{"control-plane", clusterv3.Cluster_STRICT_DNS},
		{"router.example.internal", clusterv3.Cluster_STRICT_DNS},
	} {
		c, err := RegistryCluster(Options{RegistryAddress: tc.addr, RegistryPort: 18080, ConnectTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if got := c.GetType(); got != tc.want {
			t.Errorf("registry at %s: cluster type %v, want %v", tc.addr, got, tc.want)
		}
		if err := c.Validate(); err != nil {
			t.Errorf("registry at %s: %v", tc.addr, err)
		}
	}
}

// TestFilterPicksRoundRobin: with the filter, round-robin is the filter's
// pick (override_host) over Envoy's round-robin; without it, Envoy's own.
// Least-request and random never go through the filter.
func TestFilterPicksRoundRobin(t *testing.T) {
	filter := &FilterOptions{Path: "/f.wasm", Config: "{}"}
	for _, tc := range []struct {
		policy wire.Policy
		filter *FilterOptions
		picks  bool
	}{
		{wire.PolicyRoundRobin, filter, true},
		{wire.PolicyRoundRobin, nil, false},
		{wire.PolicyLeastRequest, filter, false},
		{wire.PolicyRandom, filter, false},
		{wire.PolicyLeastWork, filter, true},
	} {
		o := testOptions()
		o.Policy, o.Filter = tc.policy, tc.filter
		if got := o.FilterPicks(); got != tc.picks {
			t.Errorf("%s, filter %v: FilterPicks = %v", tc.policy, tc.filter != nil, got)
		}
		c, err := WorkersCluster(o)
		if err != nil {
			t.Fatal(err)
		}
		outer := c.GetLoadBalancingPolicy().GetPolicies()[0].GetTypedExtensionConfig().GetName()
		if (outer == "envoy.load_balancing_policies.override_host") != tc.picks {
			t.Errorf("%s, filter %v: outer policy %q", tc.policy, tc.filter != nil, outer)
		}
	}
}

// TestRegistryBreakersFollowTheQueue: the registry cluster keeps Envoy's
// default circuit breakers unless the queue needs a call open per waiting
// request; either way it speaks HTTP/2, so those calls are streams on a
// few connections, not a connection each.
func TestRegistryBreakersFollowTheQueue(t *testing.T) {
	o := Options{RegistryAddress: "127.0.0.1", RegistryPort: 18080, ConnectTimeout: time.Second}
	registry := func() *clusterv3.Cluster {
		c, err := RegistryCluster(o)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if c := registry(); c.GetCircuitBreakers() != nil {
		t.Fatalf("breakers without the queue: %v", c.GetCircuitBreakers())
	}
	o.RegistryMaxRequests = 14096
	c := registry()
	th := c.GetCircuitBreakers().GetThresholds()
	if len(th) != 1 || th[0].GetMaxRequests().GetValue() != 14096 || th[0].GetMaxPendingRequests().GetValue() != 14096 || th[0].GetMaxConnections().GetValue() != 14096 {
		t.Fatalf("breakers with the queue: %v", th)
	}
	var po httpv3.HttpProtocolOptions
	if err := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(&po); err != nil {
		t.Fatal(err)
	}
	if po.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil || po.GetCommonHttpProtocolOptions().GetIdleTimeout().AsDuration() != RegistryIdleTimeout {
		t.Fatalf("registry protocol options %v: want HTTP/2 and an idle timeout", &po)
	}
}

// TestAsleepFleetHeldByTheQueue: a sleeping fleet answers generations 503
// at once, unless the queue holds them (HoldWhileAsleep): then they route
// as usual, so a held request does not keep a 503 route past the wake.
func TestAsleepFleetHeldByTheQueue(t *testing.T) {
	asleep := Fleet{Workers: 1, Asleep: 1}
	direct503 := func(o Options) int {
		n := 0
		for _, r := range FrontRoutes(o, asleep).GetVirtualHosts()[0].GetRoutes() {
			if r.GetDirectResponse().GetStatus() == 503 && strings.Contains(r.GetDirectResponse().GetBody().GetInlineString(), "asleep") {
				n++
			}
		}
		return n
	}
	o := testOptions()
	if direct503(o) == 0 {
		t.Fatal("a sleeping fleet's generations are not answered 503")
	}
	o.HoldWhileAsleep = true
	if n := direct503(o); n != 0 {
		t.Fatalf("%d routes answer 503 while the queue holds requests for the sleeping fleet", n)
	}
}

// TestExclusiveFrontPort: the local Envoy's listener turns SO_REUSEPORT
// off (a second Envoy on its port fails instead of sharing the clients);
// replicas (--external-envoy) keep Envoy's default, which lets several
// share a host port on purpose.
func TestExclusiveFrontPort(t *testing.T) {
	for _, exclusive := range []bool{false, true} {
		o := testOptions()
		o.ExclusivePort = exclusive
		l, err := FrontListener(o)
		if err != nil {
			t.Fatal(err)
		}
		if got := l.GetEnableReusePort(); (got != nil && !got.GetValue()) != exclusive || (!exclusive && got != nil) {
			t.Errorf("exclusive %v: enable_reuse_port %v", exclusive, got)
		}
	}
}
