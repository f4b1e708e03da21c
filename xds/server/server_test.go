package server

import (
	"context"
	"io"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/sirupsen/logrus"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/wire"
	"github.com/diffrouter/diffusion-router/xds/translate"
)

func options() translate.Options {
	return translate.Options{
		ListenAddress: "127.0.0.1", ListenPort: 30080, Policy: wire.PolicyLeastRequest, MaxConnections: 10,
		ConnectTimeout: time.Second, HealthCheckInterval: time.Second, HealthCheckTimeout: time.Second,
		HealthCheckFailureThreshold: 3, RegistryAddress: "127.0.0.1", RegistryPort: 1, OutlierConsecutiveFailures: 5,
	}
}

func build(t *testing.T, workers ...string) translate.Resources {
	t.Helper()
	var snap registry.Snapshot
	for _, w := range workers {
		u, err := registry.ParseWorkerURL(w)
		if err != nil {
			t.Fatal(err)
		}
		snap.Workers = append(snap.Workers, registry.Worker{URL: u, Address: u.Host, State: registry.StateActive})
	}
	r, err := translate.Build(snap, options())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func quiet() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return l.WithField("t", "x")
}

func TestPublishVersionsOnlyChangedTypes(t *testing.T) {
	s := New(quiet())
	ctx := context.Background()
	if err := s.Publish(ctx, 1, build(t, "http://127.0.0.1:1")); err != nil {
		t.Fatal(err)
	}
	before := map[string]string{}
	for k, v := range s.versions {
		before[k] = v
	}
	if err := s.Publish(ctx, 2, build(t, "http://127.0.0.1:1", "http://127.0.0.1:2")); err != nil {
		t.Fatal(err)
	}
	if s.versions[resourcev3.EndpointType] == before[resourcev3.EndpointType] {
		t.Error("endpoint version did not change when a worker was added")
	}
	for _, typ := range []string{resourcev3.ClusterType, resourcev3.ListenerType, resourcev3.RouteType} {
		if s.versions[typ] != before[typ] {
			t.Errorf("%s version changed although its resources did not", typ)
		}
	}
	// An older generation never replaces a newer one.
	if err := s.Publish(ctx, 1, build(t)); err != nil {
		t.Fatal(err)
	}
	if s.Generation() != 2 {
		t.Fatalf("generation = %d after a stale publish", s.Generation())
	}
}

func TestWaitSyncedTracksAcks(t *testing.T) {
	s := New(quiet())
	ctx := context.Background()
	if err := s.Publish(ctx, 1, build(t, "http://127.0.0.1:1")); err != nil {
		t.Fatal(err)
	}
	// Nobody connected: publication is enough.
	if n, err := s.WaitSynced(ctx, 1); err != nil || n != 0 {
		t.Fatalf("no Envoys: %d %v", n, err)
	}
	if g := s.SyncedGeneration(); g != 1 {
		t.Fatalf("synced generation with no Envoys = %d, want 1", g)
	}
	cb := s.callbacks()
	if err := cb.OnStreamOpen(ctx, 7, ""); err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "envoy-1", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		"admin_address": structpb.NewStringValue("127.0.0.1:9901")}}}
	for _, typ := range routedTypes {
		req := &discoverygrpc.DiscoveryRequest{TypeUrl: typ, Node: node}
		if typ == resourcev3.EndpointType || typ == resourcev3.RouteType {
			req.ResourceNames = []string{"x"}
		}
		if err := cb.OnStreamRequest(7, req); err != nil {
			t.Fatal(err)
		}
	}
	if nodes := s.Nodes(); len(nodes) != 1 || nodes[0].AdminAddress != "127.0.0.1:9901" || nodes[0].Synced {
		t.Fatalf("nodes = %+v", nodes)
	}
	// A connected Envoy that has not acknowledged generation 2 holds the
	// synced generation at 1.
	if err := s.Publish(ctx, 2, build(t, "http://127.0.0.1:2")); err != nil {
		t.Fatal(err)
	}
	if g := s.SyncedGeneration(); g != 1 {
		t.Fatalf("synced generation before any ACK = %d, want 1", g)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := s.WaitSynced(short, 1); err == nil {
		t.Fatal("synced before any ACK")
	}
	done := make(chan error, 1)
	go func() { _, err := s.WaitSynced(ctx, 1); done <- err }()
	// A NACK is recorded and does not count.
	_ = cb.OnStreamRequest(7, &discoverygrpc.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: "1",
		VersionInfo: "old", ErrorDetail: &status.Status{Message: "bad cluster"}})
	if s.Nodes()[0].LastError != "bad cluster" {
		t.Fatal("NACK not recorded")
	}
	for _, typ := range routedTypes {
		_ = cb.OnStreamRequest(7, &discoverygrpc.DiscoveryRequest{TypeUrl: typ, ResponseNonce: "2", VersionInfo: s.versions[typ],
			ResourceNames: []string{"x"}})
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitSynced did not return after every type was acknowledged")
	}
	if g := s.SyncedGeneration(); g != 2 {
		t.Fatalf("synced generation after the ACKs = %d, want 2", g)
	}
	cb.OnStreamClosed(7, node)
	if len(s.Nodes()) != 0 {
		t.Fatal("closed stream still listed")
	}
}
