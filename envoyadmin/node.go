// Package envoyadmin is what the control plane reads of a running Envoy:
// the node as it introduced itself over xDS, and its admin interface
// (upstream hosts, stats, readiness, draining). It imports nothing of the
// router, so every package may use it without an import arrow running up.
package envoyadmin

import "time"

// Node is a connected Envoy as it introduced itself to the control plane
// (xds/server fills it in; the fleet, the API and the metrics read it).
type Node struct {
	ID           string    `json:"id"`
	Cluster      string    `json:"cluster"`
	AdminAddress string    `json:"admin_address,omitempty"`
	ConnectedAt  time.Time `json:"connected_at"`
	// Synced is true when the node acknowledged the current version of every
	// resource type it subscribed to.
	Synced bool `json:"synced"`
	// LastError is the last configuration the node rejected (NACK), if any.
	LastError string `json:"last_error,omitempty"`
}
