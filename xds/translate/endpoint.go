package translate

import (
	"net"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/diffrouter/diffusion-router/jobid"
	"github.com/diffrouter/diffusion-router/registry"

	"github.com/diffrouter/diffusion-router/wire"
)

// WorkersLoadAssignment lists the workers Envoy should know: active ones as
// HEALTHY, draining ones as DRAINING (no new requests, in-flight ones finish).
// Pending and quarantined workers are left out, so nothing routes to them.
func WorkersLoadAssignment(workers []registry.Worker) *endpointv3.ClusterLoadAssignment {
	lbs := make([]*endpointv3.LbEndpoint, 0, len(workers))
	for _, w := range workers {
		if !w.InEnvoy() {
			continue
		}
		lbs = append(lbs, lbEndpoint(w))
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: wire.ClusterWorkers}
	if len(lbs) > 0 {
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}
	}
	return cla
}

func lbEndpoint(w registry.Worker) *endpointv3.LbEndpoint {
	health := corev3.HealthStatus_HEALTHY
	if w.State == registry.StateDraining || w.State == registry.StateUpdating {
		health = corev3.HealthStatus_DRAINING
	}
	md := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		"envoy.lb": {Fields: map[string]*structpb.Value{
			wire.SubsetKeyVideo:  structpb.NewBoolValue(w.Caps.Video()),
			wire.SubsetKeyImage:  structpb.NewBoolValue(w.Caps.Image()),
			wire.SubsetKeyWorker: structpb.NewStringValue(jobid.WorkerKey(w.Key())),
		}},
		wire.MetadataNamespace: {Fields: map[string]*structpb.Value{
			"url":            structpb.NewStringValue(w.Key()),
			"weight_version": structpb.NewStringValue(w.WeightVersion),
			"model_path":     structpb.NewStringValue(w.ModelPath),
		}},
	}}
	if len(w.Caps.ModelIDs) > 0 {
		ids := make([]*structpb.Value, len(w.Caps.ModelIDs))
		for i, m := range w.Caps.ModelIDs {
			ids[i] = structpb.NewStringValue(m)
		}
		md.FilterMetadata["envoy.lb"].Fields[wire.SubsetKeyModel] = structpb.NewListValue(&structpb.ListValue{Values: ids})
	}
	if w.URL.TLS() {
		md.FilterMetadata[transportSocketMatchKey] = &structpb.Struct{Fields: map[string]*structpb.Value{
			"tls": structpb.NewBoolValue(true),
		}}
	}
	return &endpointv3.LbEndpoint{
		HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: socketAddress(w.Address, w.URL.Port),
			// Hostname names the worker in Envoy's admin output; host:port
			// because Envoy may also send it as a Host header.
			Hostname: net.JoinHostPort(w.URL.Host, strconv.Itoa(int(w.URL.Port))),
		}},
		HealthStatus: health,
		Metadata:     md,
	}
}
