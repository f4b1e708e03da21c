// Package server is the xDS side of the control plane: it publishes translated
// snapshots through go-control-plane's snapshot cache over ADS, and tracks
// which Envoys are connected and which configuration versions each one has
// acknowledged, so that API calls can wait until a change is live.
package server

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/diffrouter/diffusion-router/envoyadmin"
	"github.com/diffrouter/diffusion-router/xds/translate"
)

// fleetKey is the one cache key every Envoy maps to: all replicas get the
// same configuration, so one SetSnapshot serves them all.
const fleetKey = "diffusion-router"

type fleetHash struct{}

func (fleetHash) ID(*corev3.Node) string { return fleetKey }

// routedTypes are the resource types the router publishes, in the order
// Envoy applies them.
var routedTypes = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

type stream struct {
	node      envoyadmin.Node
	acked     map[string]string // type URL -> version acknowledged
	requested map[string]bool   // type URL -> subscribed
}

// Server publishes snapshots and tracks the Envoys that consume them.
type Server struct {
	log   *logrus.Entry
	cache cachev3.SnapshotCache

	mu         sync.Mutex
	generation uint64            // registry generation of the published snapshot
	synced     uint64            // newest generation every connected Envoy acknowledged
	versions   map[string]string // type URL -> published version
	streams    map[int64]*stream
	changed    chan struct{} // closed and replaced on every change
	// epoch prefixes every version: a restarted control plane serves even an
	// unchanged configuration under a newer version.
	epoch uint64
}

// SetEpoch sets the version prefix; call it before the first Publish.
func (s *Server) SetEpoch(epoch uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.epoch = epoch
}

// New returns a server with nothing published yet.
func New(log *logrus.Entry) *Server {
	s := &Server{
		log:      log,
		versions: map[string]string{},
		streams:  map[int64]*stream{},
		changed:  make(chan struct{}),
	}
	s.cache = cachev3.NewSnapshotCache(true, fleetHash{}, cacheLogger{log})
	return s
}

// Publish installs a new configuration for the registry generation gen. Each
// resource type carries a content hash as its version, so Envoy is only sent
// the types that actually changed.
func (s *Server) Publish(ctx context.Context, gen uint64, r translate.Resources) error {
	byType := map[string][]types.Resource{}
	for _, c := range r.Clusters {
		byType[resourcev3.ClusterType] = append(byType[resourcev3.ClusterType], c)
	}
	for _, e := range r.Endpoints {
		byType[resourcev3.EndpointType] = append(byType[resourcev3.EndpointType], e)
	}
	for _, l := range r.Listeners {
		byType[resourcev3.ListenerType] = append(byType[resourcev3.ListenerType], l)
	}
	for _, rc := range r.Routes {
		byType[resourcev3.RouteType] = append(byType[resourcev3.RouteType], rc)
	}
	snap := &cachev3.Snapshot{}
	versions := map[string]string{}
	for _, typ := range routedTypes {
		v, err := contentVersion(byType[typ])
		if err != nil {
			return fmt.Errorf("publish generation %d: %w", gen, err)
		}
		s.mu.Lock()
		v = fmt.Sprintf("%d.%s", s.epoch, v)
		s.mu.Unlock()
		versions[typ] = v
		snap.Resources[cachev3.GetResponseType(typ)] = cachev3.NewResources(v, byType[typ])
	}
	if err := snap.Consistent(); err != nil {
		return fmt.Errorf("publish generation %d: inconsistent snapshot: %w", gen, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if gen < s.generation {
		// A slower publisher lost the race to a newer state; keep the newer.
		return nil
	}
	if err := s.cache.SetSnapshot(ctx, fleetKey, snap); err != nil {
		return fmt.Errorf("publish generation %d: %w", gen, err)
	}
	s.generation = gen
	s.versions = versions
	s.notifyLocked()
	s.log.WithFields(logrus.Fields{"generation": gen, "clusters": versions[resourcev3.ClusterType],
		"endpoints": versions[resourcev3.EndpointType], "routes": versions[resourcev3.RouteType]}).Debug("published xDS snapshot")
	return nil
}

// contentVersion hashes the resources' deterministic encoding, sorted by name.
func contentVersion(rs []types.Resource) (string, error) {
	sorted := slices.Clone(rs)
	sort.Slice(sorted, func(i, j int) bool { return cachev3.GetResourceName(sorted[i]) < cachev3.GetResourceName(sorted[j]) })
	h := sha256.New()
	for _, r := range sorted {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
		if err != nil {
			return "", fmt.Errorf("hash %s: %w", cachev3.GetResourceName(r), err)
		}
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func (s *Server) notifyLocked() {
	if ok, _ := s.syncedLocked(s.generation); ok {
		s.synced = max(s.synced, s.generation)
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

// Generation is the registry generation of the published snapshot.
func (s *Server) Generation() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.generation
}

// SyncedGeneration is the newest registry generation that every connected
// Envoy acknowledged (with none connected, the newest published). It
// never goes back: an Envoy that connects later starts from the current
// configuration.
func (s *Server) SyncedGeneration() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// WaitSynced blocks until generation gen (or a later one) is published and
// every connected Envoy has acknowledged it. It returns the number of Envoys
// that acknowledged. With no Envoy connected, publication is enough.
func (s *Server) WaitSynced(ctx context.Context, gen uint64) (int, error) {
	for {
		s.mu.Lock()
		done, n := s.syncedLocked(gen)
		ch := s.changed
		s.mu.Unlock()
		if done {
			return n, nil
		}
		select {
		case <-ctx.Done():
			return n, fmt.Errorf("wait for Envoys to apply generation %d: %w", gen, ctx.Err())
		case <-ch:
		}
	}
}

func (s *Server) syncedLocked(gen uint64) (bool, int) {
	if s.generation < gen {
		return false, 0
	}
	n := 0
	for _, st := range s.streams {
		if !s.streamSyncedLocked(st) {
			return false, n
		}
		n++
	}
	return true, n
}

func (s *Server) streamSyncedLocked(st *stream) bool {
	for typ, sub := range st.requested {
		if sub && st.acked[typ] != s.versions[typ] {
			return false
		}
	}
	return len(st.requested) > 0
}

// Nodes lists the connected Envoys.
func (s *Server) Nodes() []envoyadmin.Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]envoyadmin.Node, 0, len(s.streams))
	for _, st := range s.streams {
		n := st.node
		n.Synced = s.streamSyncedLocked(st)
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Serve runs the ADS gRPC server on lis until ctx is cancelled. Only
// clients that pass mutual TLS with tlsCfg (see package trust) get in: a
// node's metadata names the admin interface whose health reports the control
// plane acts on, so an unauthenticated node could quarantine the fleet.
func (s *Server) Serve(ctx context.Context, lis net.Listener, tlsCfg *tls.Config) error {
	if tlsCfg == nil || tlsCfg.ClientAuth != tls.RequireAndVerifyClientCert {
		return errors.New("xds grpc server: mutual TLS is required")
	}
	srv := serverv3.NewServer(ctx, s.cache, s.callbacks())
	g := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.MaxConcurrentStreams(1<<16),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 5 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
	)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, srv)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, srv)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, srv)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, srv)
	routeservice.RegisterRouteDiscoveryServiceServer(g, srv)
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(lis) }()
	select {
	case <-ctx.Done():
		g.Stop()
		<-errc
		return nil
	case err := <-errc:
		return fmt.Errorf("xds grpc server: %w", err)
	}
}

func (s *Server) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamOpenFunc: func(_ context.Context, id int64, typ string) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.streams[id] = &stream{acked: map[string]string{}, requested: map[string]bool{}, node: envoyadmin.Node{ConnectedAt: time.Now()}}
			return nil
		},
		StreamClosedFunc: func(id int64, _ *corev3.Node) {
			s.mu.Lock()
			defer s.mu.Unlock()
			if st, ok := s.streams[id]; ok {
				s.log.WithField("node", st.node.ID).Info("Envoy disconnected from xDS")
			}
			delete(s.streams, id)
			s.notifyLocked()
		},
		StreamRequestFunc: func(id int64, req *discoveryRequest) error {
			s.onRequest(id, req)
			return nil
		},
	}
}

type discoveryRequest = discoverygrpc.DiscoveryRequest

func (s *Server) onRequest(id int64, req *discoveryRequest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.streams[id]
	if !ok {
		return
	}
	if n := req.GetNode(); n != nil && st.node.ID == "" {
		st.node.ID, st.node.Cluster = n.GetId(), n.GetCluster()
		if v, ok := n.GetMetadata().GetFields()["admin_address"]; ok {
			st.node.AdminAddress = v.GetStringValue()
		}
		s.log.WithFields(logrus.Fields{"node": st.node.ID, "admin": st.node.AdminAddress}).Info("Envoy connected to xDS")
	}
	typ := req.GetTypeUrl()
	st.requested[typ] = len(req.GetResourceNames()) > 0 || typ == resourcev3.ClusterType || typ == resourcev3.ListenerType
	if req.GetResponseNonce() != "" {
		if d := req.GetErrorDetail(); d != nil {
			st.node.LastError = d.GetMessage()
			s.log.WithFields(logrus.Fields{"node": st.node.ID, "type": typ, "version": req.GetVersionInfo()}).
				Errorf("Envoy rejected configuration: %s", d.GetMessage())
		} else {
			st.acked[typ] = req.GetVersionInfo()
		}
	} else if req.GetVersionInfo() != "" {
		// A reconnecting Envoy reports what it already runs.
		st.acked[typ] = req.GetVersionInfo()
	}
	s.notifyLocked()
}

// cacheLogger routes go-control-plane's logging into logrus at debug level.
type cacheLogger struct{ l *logrus.Entry }

func (c cacheLogger) Debugf(f string, a ...any) { c.l.Debugf("xds cache: "+f, a...) }
func (c cacheLogger) Infof(f string, a ...any)  { c.l.Debugf("xds cache: "+f, a...) }
func (c cacheLogger) Warnf(f string, a ...any)  { c.l.Warnf("xds cache: "+f, a...) }
func (c cacheLogger) Errorf(f string, a ...any) { c.l.Errorf("xds cache: "+f, a...) }
