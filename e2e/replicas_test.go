package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/xds/trust"
)

var controlPlaneReady = regexp.MustCompile(`control plane ready; xDS at (\S+), registry API at (\S+)`)

// startEnvoyReplica runs one Envoy fed by the control plane at xds, with its
// admin interface on a free port, and waits until it serves. tlsDir is the
// control plane's credentials directory: the Envoy connects with its
// certificate and carries its job-id secret in the environment, as an
// operator's Envoy would.
// Extra arguments go to `diffusion-router bootstrap`.
func startEnvoyReplica(t *testing.T, xds, tlsDir, name string, bootstrapArgs ...string) (admin string) {
	t.Helper()
	port := freePort(t)
	args := append([]string{"bootstrap", "--xds", xds, "--admin-port", strconv.Itoa(port), "--node-id", name, "--xds-tls-dir", tlsDir}, bootstrapArgs...)
	out, err := exec.Command(filepath.Join(binDir, "diffusion-router"), args...).Output()
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	path := filepath.Join(t.TempDir(), name+".yaml")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	secret, err := trust.JobSecret(tlsDir)
	if err != nil {
		t.Fatal(err)
	}
	startPathEnv(t, "envoy-"+name, envoyBin, []string{trust.JobSecretEnv + "=" + secret},
		"-c", path, "--disable-hot-restart", "--concurrency", "1", "--log-level", "warn")
	admin = "http://127.0.0.1:" + strconv.Itoa(port)
	eventually(t, 60*time.Second, name+" to be ready", func() bool {
		r, err := tryDo(t.Context(), "GET", admin+"/ready", "", nil)
		return err == nil && r.Status == 200
	})
	return admin
}

// TestTwoEnvoyReplicas: two Envoys on one control plane get the same
// configuration, and a worker ejected by one of them is quarantined and
// dropped by both.
func TestTwoEnvoyReplicas(t *testing.T) {
	t.Parallel()
	good := startWorker(t)
	bad := startWorker(t, "--fail-rate", "1")
	front := freePort(t)
	state := t.TempDir()
	cp := start(t, "diffusion-router", "--external-envoy", "--host", "127.0.0.1", "--port", strconv.Itoa(front),
		"--xds-port", strconv.Itoa(freePort(t)), "--state-dir", state, "--outlier-consecutive-failures", "3",
		"--wasm-filter", filepath.Join(binDir, "diffusion-tagger.wasm"), "--log-level", "debug",
		"--worker-urls", good.URL, bad.URL)
	m := cp.waitOutput(controlPlaneReady, 30*time.Second)
	xds, api := m[1], "http://"+strings.TrimPrefix(m[2], "http://")
	tlsDir := filepath.Join(state, "xds-tls")
	adminA := startEnvoyReplica(t, xds, tlsDir, "replica-a")
	adminB := startEnvoyReplica(t, xds, tlsDir, "replica-b")

	eventually(t, 20*time.Second, "both replicas to run the current configuration", func() bool {
		return strings.Contains(string(get(t, api+"/metrics").Body), `diffusion_router_envoys_connected{synced="true"} 2`)
	})
	// Compared as JSON values: Envoy prints the fields of a metadata
	// match (a protobuf Struct) in no fixed order.
	routes := func(admin string) []any {
		var dump struct {
			Configs []struct {
				VersionInfo string `json:"version_info"`
				RouteConfig any    `json:"route_config"`
			} `json:"configs"`
		}
		if err := json.Unmarshal(get(t, admin+"/config_dump?resource=dynamic_route_configs").Body, &dump); err != nil {
			t.Fatal(err)
		}
		var out []any
		for _, c := range dump.Configs {
			out = append(out, c.VersionInfo, c.RouteConfig)
		}
		return out
	}
	if ra, rb := routes(adminA), routes(adminB); len(ra) == 0 || !reflect.DeepEqual(ra, rb) {
		t.Fatalf("the replicas run different routes:\n%.300v\n%.300v", ra, rb)
	}

	// Both replicas listen on the one front port (SO_REUSEPORT), so the
	// kernel spreads connections over them; the failing worker is ejected by
	// whichever replica sees 3 failures first.
	frontURL := "http://127.0.0.1:" + strconv.Itoa(front)
	g := &loadGen{}
	g.run(frontURL, `{"prompt":"x","num_inference_steps":2}`, 60, 2)
	eventually(t, 10*time.Second, "the failing worker to be quarantined", func() bool {
		return stateOf(t, api, bad.URL) == "quarantined"
	})
	hasHost := func(admin, url string) bool {
		return strings.Contains(string(get(t, admin+"/clusters").Body), "::"+strings.TrimPrefix(url, "http://")+"::")
	}
	eventually(t, 10*time.Second, "both replicas to drop the quarantined worker", func() bool {
		return !hasHost(adminA, bad.URL) && !hasHost(adminB, bad.URL)
	})
	if !hasHost(adminA, good.URL) || !hasHost(adminB, good.URL) {
		t.Fatal("a replica dropped the healthy worker")
	}
	after := &loadGen{}
	after.run(frontURL, `{"prompt":"x","num_inference_steps":2}`, 40, 4)
	if after.failed.Load() != 0 {
		t.Fatalf("%d failures after the quarantine", after.failed.Load())
	}
}
