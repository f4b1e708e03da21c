package router

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/diffrouter/diffusion-router/xds/translate"
	"github.com/diffrouter/diffusion-router/xds/trust"

	"github.com/diffrouter/diffusion-router/wire"
)

// FilterFile is the name of the built Wasm filter.
const FilterFile = "diffusion-tagger.wasm"

// findFilter resolves --wasm-filter: "none" turns the filter off; empty looks
// for the build output next to the executable, then in bin/ from the working
// directory upwards.
func findFilter(flag string, external bool) (string, error) {
	switch flag {
	case "none", "off":
		return "", nil
	case "":
	default:
		if external {
			// A path on the Envoys' file system (another container), not
			// this one's: nothing to check here.
			return flag, nil
		}
		abs, err := filepath.Abs(flag)
		if err != nil {
			return "", err
		}
		if _, err := os.Stat(abs); err != nil {
			return "", fmt.Errorf("--wasm-filter: %w", err)
		}
		return abs, nil
	}
	var candidates []string
	if exe, err := os.Executable(); err == nil {
		candidates = append(candidates, filepath.Join(filepath.Dir(exe), FilterFile))
	}
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; dir = filepath.Dir(dir) {
			candidates = append(candidates, filepath.Join(dir, "bin", FilterFile))
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			return c, nil
		}
	}
	return "", errors.New("the Wasm filter (" + FilterFile + ") was not found next to the binary or in bin/: run `make build`, pass --wasm-filter PATH, or --wasm-filter none to run without it")
}

// migrateFilterSecret keeps job ids valid across an upgrade: a state
// directory from before package trust kept the secret in filter-secret; new
// credentials take it over.
func migrateFilterSecret(stateDir, tlsDir string) error {
	old := filepath.Join(stateDir, "filter-secret")
	b, err := os.ReadFile(old)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("read %s: %w", old, err)
	}
	if len(strings.TrimSpace(string(b))) < trust.MinJobSecret {
		return nil
	}
	if err := os.WriteFile(filepath.Join(tlsDir, trust.EnvoyDir, trust.JobSecretFile), b, 0o600); err != nil {
		return fmt.Errorf("migrate %s: %w", old, err)
	}
	return os.Remove(old)
}

// filterOptions builds the filter's configuration, or nil when it is off.
// The job-id secret is not in it: the configuration is readable on every
// Envoy's admin port. Envoy carries the secret in its environment
// (trust.JobSecretEnv) into the filter's VM.
func filterOptions(c Config, policy wire.Policy) (*translate.FilterOptions, error) {
	spec, err := policy.Spec()
	if err != nil {
		return nil, err
	}
	pick := spec.FilterPicks
	path, err := findFilter(c.WasmFilter, c.ExternalEnvoy)
	if err != nil || path == "" {
		return nil, err
	}
	fc := wire.DefaultFilterConfig()
	fc.SecretEnv, fc.FailClosed, fc.JobsCluster = trust.JobSecretEnv, c.FilterFailClosed, wire.ClusterRegistry
	fc.RequestIdleMs = c.RequestIdleTimeout.Milliseconds()
	if pick {
		fc.Pick, fc.SyncCluster = true, wire.ClusterRegistry
		fc.OverdueFactor, fc.OverdueFloorMs = c.OverdueFactor, c.OverdueFloor.Milliseconds()
		fc.StallFactor, fc.StallFloorMs = c.StallFactor, c.StallFloor.Milliseconds()
		if policy != fc.PickPolicy() {
			fc.Policy = policy // least-work, the filter's default, goes unsaid
		}
	}
	if q := c.Queue; q.On && pick {
		fc.Queue = true
		fc.IgnoreClientPriority, fc.MaxClientPriority = q.ClientPriority == "ignore", q.MaxClientPriority
		fc.IgnoreClientTenant, fc.TrustBodyUser = q.ClientTenant == "ignore", q.TrustBodyUser
		fc.HoldJobs = c.HeldEnvoyURL() != ""
		if q.Timeout > 0 {
			// The control plane answers at its timeout; this is the
			// backstop if it never does.
			fc.QueueWaitMs = min((q.Timeout + 30*time.Second).Milliseconds(), math.MaxInt32)
		}
	}
	cfg, err := json.Marshal(fc)
	if err != nil {
		return nil, err
	}
	return &translate.FilterOptions{Path: path, Config: string(cfg), HostEnvKeys: []string{trust.JobSecretEnv}}, nil
}
