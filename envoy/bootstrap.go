// Package envoy holds what the control plane needs to run and read a local
// Envoy: the bootstrap, the supervisor that keeps the process alive, and a
// client for the admin interface.
package envoy

import (
	"bytes"
	_ "embed"
	"fmt"
	"net"
	"text/template"

	"github.com/diffrouter/diffusion-router/xds/trust"
)

//go:embed bootstrap.yaml.tmpl
var bootstrapTemplate string

var bootstrapTmpl = template.Must(template.New("bootstrap").Option("missingkey=error").Parse(bootstrapTemplate))

// Bootstrap are the values the bootstrap file is rendered from.
type Bootstrap struct {
	NodeID string
	// AdminAddress and AdminPort are where Envoy's admin interface listens
	// (loopback by default: it can change Envoy's state).
	AdminAddress string
	AdminPort    int
	// AdminAdvertise is how the control plane reaches that admin interface
	// (host:port); it travels in the node metadata.
	AdminAdvertise string
	XDSAddress     string
	XDSPort        int
	// MaxDownstreamConnections caps client connections (overload manager).
	MaxDownstreamConnections int
	// TLS are the files of this Envoy's side of mutual TLS with the control
	// plane, as paths on the Envoy's file system (see trust.EnvoyFilesIn).
	TLS trust.EnvoyFiles
}

// bootstrapData is what the template sees.
type bootstrapData struct {
	Bootstrap
	ServerName string
}

// Render produces the bootstrap YAML.
func Render(b Bootstrap) ([]byte, error) {
	if b.NodeID == "" {
		return nil, fmt.Errorf("render bootstrap: node id is empty")
	}
	if b.AdminPort <= 0 || b.AdminPort > 65535 || b.XDSPort <= 0 || b.XDSPort > 65535 {
		return nil, fmt.Errorf("render bootstrap: admin port %d or xds port %d out of range", b.AdminPort, b.XDSPort)
	}
	if b.AdminAddress == "" || b.XDSAddress == "" {
		return nil, fmt.Errorf("render bootstrap: admin and xds addresses are required")
	}
	if b.TLS.CA == "" || b.TLS.Cert == "" || b.TLS.Key == "" {
		return nil, fmt.Errorf("render bootstrap: the xDS connection's TLS files are required")
	}
	if b.AdminAdvertise == "" {
		b.AdminAdvertise = net.JoinHostPort(b.AdminAddress, fmt.Sprint(b.AdminPort))
	}
	if b.MaxDownstreamConnections <= 0 {
		b.MaxDownstreamConnections = 50000
	}
	var buf bytes.Buffer
	if err := bootstrapTmpl.Execute(&buf, bootstrapData{Bootstrap: b, ServerName: trust.ServerName}); err != nil {
		return nil, fmt.Errorf("render bootstrap: %w", err)
	}
	return buf.Bytes(), nil
}
