package router

import (
	"crypto/tls"
	"fmt"
	"path/filepath"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/wire"
	"github.com/diffrouter/diffusion-router/xds/translate"
	"github.com/diffrouter/diffusion-router/xds/trust"
)

// xdsCredentials finds or makes the mutual-TLS credentials of the xDS
// connection (and the job-id secret), and gives the server's side.
func xdsCredentials(c Config, stateDir string, base *logrus.Entry) (string, *tls.Config, error) {
	tlsDir := c.XDSTLSDir
	if tlsDir == "" {
		tlsDir = filepath.Join(stateDir, "xds-tls")
	}
	tlsDir, err := filepath.Abs(tlsDir)
	if err != nil {
		return "", nil, fmt.Errorf("--xds-tls-dir: %w", err)
	}
	made, err := trust.Ensure(tlsDir, trust.Owners{})
	if err != nil {
		return "", nil, err
	}
	if made && !c.ExternalEnvoy {
		if err := migrateFilterSecret(stateDir, tlsDir); err != nil {
			return "", nil, err
		}
	}
	if made && c.ExternalEnvoy {
		base.WithField("dir", tlsDir).Warn("made new xDS credentials: every Envoy needs ca.pem and envoy/ from this directory (see `diffusion-router bootstrap --xds-tls-dir`)")
	}
	serverTLS, err := trust.ServerTLS(tlsDir)
	return tlsDir, serverTLS, err
}

// translateOptions turns the flags into the translator's options; api is
// the registry API's address (Envoy reaches it there unless
// --registry-advertise says otherwise).
func translateOptions(c Config, api string, base *logrus.Entry) (translate.Options, error) {
	regHost, regPort, err := splitHostPort(api)
	if err != nil {
		return translate.Options{}, err
	}
	if c.RegistryAdvertise != "" {
		if regHost, regPort, err = splitHostPort(c.RegistryAdvertise); err != nil {
			return translate.Options{}, fmt.Errorf("--registry-advertise: %w", err)
		}
	}
	opts := translate.Options{
		ListenAddress:               c.Host,
		ListenPort:                  uint32(c.Port),
		ExclusivePort:               !c.ExternalEnvoy,
		Policy:                      wire.Policy(c.RoutingAlgorithm),
		Timeout:                     c.Timeout,
		MaxConnections:              uint32(c.MaxConnections),
		MaxRetries:                  uint32(c.MaxRetries),
		StrictModels:                c.StrictModelRouting,
		ConnectTimeout:              c.ConnectTimeout,
		HealthCheckInterval:         c.HealthCheckInterval,
		HealthCheckTimeout:          c.HealthCheckTimeout,
		HealthCheckFailureThreshold: uint32(c.HealthCheckFailureThreshold),
		OutlierConsecutiveFailures:  uint32(c.OutlierFailures),
		RegistryAddress:             regHost,
		RegistryPort:                regPort,
	}
	if c.OTLPEndpoint != "" {
		if opts.OTLPAddress, opts.OTLPPort, err = splitHostPort(c.OTLPEndpoint); err != nil {
			return translate.Options{}, fmt.Errorf("--otlp-endpoint: %w", err)
		}
		opts.TraceSampling = c.TraceSampling
	}
	if c.Queue.On {
		// Every waiting request holds one call to the control plane open.
		opts.RegistryMaxRequests = uint32(c.Queue.MaxQueued) + 4096
		opts.HoldWhileAsleep = c.Queue.HoldWhileAsleep
	}
	if !c.ExternalEnvoy || c.WasmFilter != "" {
		// With external Envoys the filter path must be given: it is a path
		// on their file system, not this one's.
		if opts.Filter, err = filterOptions(c, opts.Policy); err != nil {
			return translate.Options{}, err
		}
	}
	if opts.Filter == nil && specOf(string(opts.Policy)).NeedsFilter && !c.RoutingAlgorithmSet {
		// The default policy needs the filter (external Envoys without
		// --wasm-filter run none): Envoy's own least-request instead.
		opts.Policy = wire.PolicyLeastRequest
	}
	if opts.Filter != nil {
		base.WithField("path", opts.Filter.Path).Info("Wasm filter enabled")
	} else {
		base.Warn("running without the Wasm filter: no request tags, no job affinity across video workers")
	}
	if err := opts.Validate(); err != nil {
		return translate.Options{}, fmt.Errorf("router options: %w", err)
	}
	return opts, nil
}

// openRegistry loads the registry from the state directory's store and
// makes it write every change there.
func openRegistry(stateDir string, base *logrus.Entry) (*registry.Registry, *registry.Store, error) {
	reg := registry.New(nil)
	store, err := registry.OpenStore(stateDir)
	if err != nil {
		return nil, nil, err
	}
	if err := reg.Persist(store, func(err error) {
		base.WithError(err).Error("cannot write the registry to its store; the change was refused (503) and undone")
	}); err != nil {
		store.Close()
		return nil, nil, err
	}
	if n := len(reg.Snapshot().Workers); n > 0 {
		base.WithFields(logrus.Fields{"workers": n, "store": filepath.Join(stateDir, registry.StoreFile)}).Info("registry restored")
	}
	return reg, store, nil
}
