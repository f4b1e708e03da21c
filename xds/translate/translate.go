package translate

import (
	"fmt"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/diffrouter/diffusion-router/jobid"
	"github.com/diffrouter/diffusion-router/registry"
)

// Resources is one complete, consistent Envoy configuration.
type Resources struct {
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
}

// Build translates the fleet into Envoy's configuration.
func Build(snap registry.Snapshot, o Options) (Resources, error) {
	if err := o.Validate(); err != nil {
		return Resources{}, fmt.Errorf("translate: %w", err)
	}
	workers, err := WorkersCluster(o)
	if err != nil {
		return Resources{}, err
	}
	front, err := FrontListener(o)
	if err != nil {
		return Resources{}, err
	}
	registryCluster, err := RegistryCluster(o)
	if err != nil {
		return Resources{}, err
	}
	clusters := []*clusterv3.Cluster{workers, registryCluster}
	otlp, err := OTLPCluster(o)
	if err != nil {
		return Resources{}, err
	}
	if otlp != nil {
		clusters = append(clusters, otlp)
	}
	return Resources{
		Clusters:  clusters,
		Endpoints: []*endpointv3.ClusterLoadAssignment{WorkersLoadAssignment(snap.Workers)},
		Listeners: []*listenerv3.Listener{front},
		Routes:    []*routev3.RouteConfiguration{FrontRoutes(o, FleetOf(snap.Workers))},
	}, nil
}

// FleetOf counts what the route table depends on.
func FleetOf(workers []registry.Worker) Fleet {
	var f Fleet
	for _, w := range workers {
		q := w.State == registry.StateQuarantined
		asleep := w.State == registry.StateActive && w.Asleep
		routable := w.Routable()
		video, image := w.Caps.Video(), w.Caps.Image()
		f.Workers++
		f.Quarantined += b2i(q)
		f.Asleep += b2i(asleep)
		if asleep {
			f.AsleepKeys = append(f.AsleepKeys, jobid.WorkerKey(w.Key()))
		}
		f.Routable += b2i(routable)
		if video {
			f.VideoWorkers++
			f.VideoQuarantined += b2i(q)
			f.VideoAsleep += b2i(asleep)
			f.VideoRoutable += b2i(routable)
		}
		if image {
			f.ImageRoutable += b2i(routable)
		}
		// Every id a worker lists routes to it.
		f.Models = append(f.Models, w.Caps.ModelIDs...)
		if video {
			f.VideoModels = append(f.VideoModels, w.Caps.ModelIDs...)
		}
		if image {
			f.ImageModels = append(f.ImageModels, w.Caps.ModelIDs...)
		}
	}
	for _, l := range []*[]string{&f.Models, &f.VideoModels, &f.ImageModels} {
		slices.Sort(*l)
		*l = slices.Compact(*l)
	}
	return f
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
