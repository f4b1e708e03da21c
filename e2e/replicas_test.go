package e2e

import (
	"encoding/json"
	"io"
	"net/http"
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

// envoyClients holds one kept-alive connection to each Envoy of a shared
// front port: a client with one such connection stays with the Envoy that
// accepted it, as long as every answer is read to its end.
type envoyClients struct {
	base    string
	clients map[string]*http.Client // by Envoy admin address
}

// clientPerEnvoy opens connections to base until each Envoy (named by its
// admin address) holds one.
func clientPerEnvoy(t *testing.T, base string, admins []string) envoyClients {
	t.Helper()
	via := envoyClients{base: base, clients: map[string]*http.Client{}}
	served := func(admin string) int { return envoyStat(t, admin, "http.front.downstream_rq_total") }
	eventually(t, 20*time.Second, "a connection to each Envoy", func() bool {
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1}}
		before := make([]int, len(admins))
		for i, admin := range admins {
			before[i] = served(admin)
		}
		resp, err := c.Get(base + "/health")
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		for i, admin := range admins {
			if served(admin) > before[i] && via.clients[admin] == nil {
				via.clients[admin] = c
			}
		}
		return len(via.clients) == len(admins)
	})
	return via
}

// send sends one request through the Envoy at admin.
func (v envoyClients) send(admin, method, path, body string) (int, []byte, error) {
	code, _, b, err := v.sendHeaders(admin, method, path, body)
	return code, b, err
}

func (v envoyClients) sendHeaders(admin, method, path, body string) (int, http.Header, []byte, error) {
	req, _ := http.NewRequest(method, v.base+path, strings.NewReader(body))
	req.Header.Set("content-type", "application/json")
	resp, err := v.clients[admin].Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b, err
}

// call sends through the Envoy at admin, checks that it is that Envoy
// which served it, and decodes a 200 answer.
func (v envoyClients) call(t *testing.T, admin, method, path, body string) map[string]any {
	t.Helper()
	out, _ := v.callHeaders(t, admin, method, path, body)
	return out
}

func (v envoyClients) callHeaders(t *testing.T, admin, method, path, body string) (map[string]any, http.Header) {
	t.Helper()
	before := envoyStat(t, admin, "http.front.downstream_rq_total")
	code, h, b, err := v.sendHeaders(admin, method, path, body)
	var out map[string]any
	if err == nil {
		err = json.Unmarshal(b, &out)
	}
	if after := envoyStat(t, admin, "http.front.downstream_rq_total"); err != nil || code != 200 || after != before+1 {
		t.Fatalf("%s %s = %d %s (%v); served by the Envoy at %s: %v", method, path, code, b, err, admin, after == before+1)
	}
	return out, h
}
