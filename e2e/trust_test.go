package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/diffrouter/diffusion-router/xds/trust"
)

// fakeAdmin is an Envoy admin interface that reports every given worker,
// ejected by outlier detection (what a rogue node would point the control
// plane at) or healthy. It counts how often it is read.
func fakeAdmin(t *testing.T, workers []string, ejected bool) (addr string, reads *atomic.Int64) {
	t.Helper()
	reads = new(atomic.Int64)
	var hosts []string
	for _, u := range workers {
		hp := strings.TrimPrefix(u, "http://")
		host, port, _ := strings.Cut(hp, ":")
		hosts = append(hosts, fmt.Sprintf(`{"address":{"socket_address":{"address":%q,"port_value":%s}},"hostname":%q,
			"stats":[{"name":"rq_total","value":"10"},{"name":"rq_error","value":"10"}],
			"health_status":{"eds_health_status":"HEALTHY","failed_outlier_check":%v}}`, host, port, hp, ejected))
	}
	body := `{"cluster_statuses":[{"name":"workers","host_statuses":[` + strings.Join(hosts, ",") + `]}]}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reads.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), reads
}

// adsAttempt opens an ADS stream as a node whose metadata names admin, asks
// for clusters and reports whether the control plane answered.
func adsAttempt(xds string, creds credentials.TransportCredentials, admin string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(xds, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	md := map[string]any{}
	if admin != "" {
		md["admin_address"] = admin
	}
	meta, err := structpb.NewStruct(md)
	if err != nil {
		return err
	}
	if err := stream.Send(&discoverygrpc.DiscoveryRequest{Node: &corev3.Node{Id: "rogue-go", Cluster: "diffusion-router", Metadata: meta},
		TypeUrl: resourcev3.ClusterType}); err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}

// TestRogueXDSNode is the attack of issue 13: a process that reaches the xDS
// port joins as an Envoy whose admin address is a fake admin reporting every
// worker ejected. Without the router's credentials it does not get in, and
// nothing is quarantined; with them (the control at the end) the same node
// does quarantine, which is why the credentials must be protected.
func TestRogueXDSNode(t *testing.T) {
	t.Parallel()
	_, urls := startFleet(t, 2)
	state := t.TempDir()
	args := append([]string{"--external-envoy", "--host", "127.0.0.1", "--port", strconv.Itoa(freePort(t)),
		"--xds-port", strconv.Itoa(freePort(t)), "--state-dir", state, "--observe-interval", "0.2",
		"--wasm-filter", "none", "--log-level", "debug", "--worker-urls"}, urls...)
	cp := start(t, "diffusion-router", args...)
	m := cp.waitOutput(controlPlaneReady, 30*time.Second)
	xds, api := m[1], "http://"+strings.TrimPrefix(m[2], "http://")
	tlsDir := filepath.Join(state, "xds-tls")
	fake, reads := fakeAdmin(t, urls, true)
	// An honest replica, so that the observations can be counted.
	honest, observed := fakeAdmin(t, urls, false)
	startEnvoyReplica(t, xds, tlsDir, "honest", "--admin-advertise", honest)

	// Credentials of another router, made with the project's own command.
	foreign := filepath.Join(t.TempDir(), "foreign")
	if out, err := exec.Command(filepath.Join(binDir, "diffusion-router"), "certs", "--dir", foreign).CombinedOutput(); err != nil {
		t.Fatalf("certs: %v\n%s", err, out)
	}
	rogueAdmin := startEnvoyReplica(t, xds, foreign, "rogue-envoy", "--admin-advertise", fake)
	eventually(t, 30*time.Second, "the rogue Envoy to try the control plane several times", func() bool {
		r, err := tryDo(t.Context(), "GET", rogueAdmin+"/stats?filter=^cluster.xds_cluster.upstream_cx_total$", "", nil)
		if err != nil {
			return false
		}
		n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(string(r.Body), "cluster.xds_cluster.upstream_cx_total:")))
		return n >= 3
	})

	foreignTLS, err := trust.ClientTLS(foreign)
	if err != nil {
		t.Fatal(err)
	}
	ownTLS, err := trust.ClientTLS(tlsDir)
	if err != nil {
		t.Fatal(err)
	}
	noCert := ownTLS.Clone()
	noCert.Certificates = nil
	for name, creds := range map[string]credentials.TransportCredentials{
		"plaintext":                    insecure.NewCredentials(),
		"another router's certificate": credentials.NewTLS(foreignTLS),
		"TLS without a certificate":    credentials.NewTLS(noCert),
	} {
		if err := adsAttempt(xds, creds, fake); err == nil {
			t.Errorf("%s: the control plane served a node without the router's credentials", name)
		}
	}
	// The same client with the router's credentials is served: the refusals
	// above are the credentials, not a malformed request.
	if err := adsAttempt(xds, credentials.NewTLS(ownTLS), ""); err != nil {
		t.Fatalf("a node with the router's credentials was refused: %v", err)
	}

	// Several observations after all those attempts, nothing read the
	// rogue's admin, and every worker is still active.
	after := observed.Load()
	eventually(t, 20*time.Second, "three more observations", func() bool { return observed.Load() >= after+3 })
	metricsBefore := string(get(t, api+"/metrics").Body)
	if reads.Load() != 0 {
		t.Fatalf("the control plane read the rogue node's admin interface %d times", reads.Load())
	}
	if !strings.Contains(metricsBefore, `diffusion_router_workers{state="active"} 2`) {
		t.Fatalf("workers changed state:\n%s", metricsBefore)
	}

	// The control: an Envoy with the router's own credentials and the fake
	// admin quarantines both workers.
	startEnvoyReplica(t, xds, tlsDir, "trusted-but-lying", "--admin-advertise", fake)
	eventually(t, 20*time.Second, "the credentialed node's ejections to quarantine the workers", func() bool {
		return strings.Contains(string(get(t, api+"/metrics").Body), `diffusion_router_workers{state="quarantined"} 2`)
	})
	if reads.Load() == 0 {
		t.Fatal("quarantined without reading the fake admin")
	}
}
