package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// clusterVersion reads the CDS version Envoy last accepted (a text stat;
// config_dump keeps each resource's version from when it last changed).
func clusterVersion(t *testing.T, admin string) string {
	t.Helper()
	body := string(get(t, admin+"/stats?filter=^cluster_manager%5C.cds%5C.version_text$").Body)
	_, v, ok := strings.Cut(strings.TrimSpace(body), ": ")
	if !ok {
		t.Fatalf("no cds version_text in %q", body)
	}
	return strings.Trim(v, `"`)
}

func fleetView(t *testing.T, api string) string {
	t.Helper()
	var v struct {
		Workers []map[string]any `json:"workers"`
	}
	if err := json.Unmarshal(get(t, api+"/workers").Body, &v); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, w := range v.Workers {
		fmt.Fprintf(&b, "%v %v %q %v %v\n", w["url"], w["state"], w["reason"], w["weight_version"], w["since"])
	}
	return b.String()
}

// TestControlPlaneRestart: the control plane dies and comes back on the same
// state directory during a steady load. Envoy keeps routing meanwhile, no
// request fails, the registry is the same afterwards (a quarantined worker
// stays quarantined) and Envoy runs the same configuration under a newer
// version.
func TestControlPlaneRestart(t *testing.T) {
	t.Parallel()
	_, urls := startFleet(t, 3)
	state := t.TempDir()
	args := []string{"--external-envoy", "--host", "127.0.0.1", "--port", strconv.Itoa(freePort(t)),
		"--xds-port", strconv.Itoa(freePort(t)), "--api-port", strconv.Itoa(freePort(t)), "--state-dir", state,
		"--wasm-filter", filepath.Join(binDir, "diffusion-tagger.wasm"), "--log-level", "debug", "--worker-urls"}
	args = append(args, urls...)
	cp := start(t, "diffusion-router", args...)
	m := cp.waitOutput(controlPlaneReady, 30*time.Second)
	xds, api := m[1], "http://"+strings.TrimPrefix(m[2], "http://")
	admin := startEnvoyReplica(t, xds, filepath.Join(state, "xds-tls"), "restart")
	synced := func() bool {
		r, err := tryDo(t.Context(), "GET", api+"/metrics", "", nil)
		return err == nil && strings.Contains(string(r.Body), `diffusion_router_envoys_connected{synced="true"} 1`)
	}
	eventually(t, 20*time.Second, "Envoy to run the configuration", synced)
	id := strings.NewReplacer(":", "%3A", "/", "%2F").Replace(urls[2])
	if resp := do(t, "PUT", api+"/workers/"+id, "application/json", strings.NewReader(`{"is_dead": true}`)); resp.Status != 200 {
		t.Fatalf("quarantine = %d %s", resp.Status, resp.Body)
	}
	if resp := postJSON(t, api+"/update_weights_from_disk", map[string]any{"model_path": "/ckpt/5", "weight_version": "5"}); resp.Status != 200 {
		t.Fatalf("update = %d %s", resp.Status, resp.Body)
	}
	eventually(t, 20*time.Second, "Envoy to run the configuration", synced)
	before := fleetView(t, api)
	versionBefore := clusterVersion(t, admin)

	front := "http://127.0.0.1:" + args[4] // --port's value
	load := &loadGen{}
	done := make(chan struct{})
	go func() { defer close(done); load.run(front, `{"prompt":"x","num_inference_steps":20}`, 1500, 4) }()
	eventually(t, 20*time.Second, "load to start", func() bool { return load.sent.Load() > 100 })
	select {
	case <-done:
		t.Fatal("the load ended before the crash: nothing would cross the restart")
	default:
	}
	sentAtCrash := load.sent.Load()

	cp.kill() // a crash, not a shutdown
	if _, err := os.Stat(filepath.Join(state, "registry.db")); err != nil {
		t.Fatal(err)
	}
	cp2 := start(t, "diffusion-router", args...)
	cp2.waitOutput(controlPlaneReady, 30*time.Second)
	eventually(t, 30*time.Second, "Envoy to reconnect and run the configuration", synced)
	<-done

	if f := load.failed.Load(); f != 0 {
		t.Fatalf("%d of %d requests failed across the restart (first: %v)", f, load.sent.Load(), load.firstFailure.Load())
	}
	if n := load.sent.Load(); n <= sentAtCrash {
		t.Fatalf("no request was sent after the crash (%d before, %d in all)", sentAtCrash, n)
	}
	if after := fleetView(t, api); after != before {
		t.Fatalf("registry changed across the restart:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	versionAfter := clusterVersion(t, admin)
	epochOf := func(v string) int {
		n, err := strconv.Atoi(strings.SplitN(v, ".", 2)[0])
		if err != nil {
			t.Fatalf("version %q has no epoch", v)
		}
		return n
	}
	if epochOf(versionAfter) <= epochOf(versionBefore) {
		t.Fatalf("Envoy's version went from %q to %q, want a newer one", versionBefore, versionAfter)
	}
	if strings.SplitN(versionAfter, ".", 2)[1] != strings.SplitN(versionBefore, ".", 2)[1] {
		t.Fatalf("the configuration changed across the restart: %q -> %q", versionBefore, versionAfter)
	}
}

// TestCorruptStoreStopsStartup: a store that cannot be read stops the
// router with a clear error; it is never silently reset.
func TestCorruptStoreStopsStartup(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	if err := os.WriteFile(filepath.Join(state, "registry.db"), []byte(strings.Repeat("garbage", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	p := start(t, "diffusion-router", "--port", strconv.Itoa(freePort(t)), "--state-dir", state)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatal("router started on a corrupt store")
	}
	if code := p.cmd.ProcessState.ExitCode(); code == 0 || !strings.Contains(p.out.String(), "corrupt") {
		t.Fatalf("exit %d, output:\n%s", code, p.out.String())
	}
	if b, _ := os.ReadFile(filepath.Join(state, "registry.db")); !strings.HasPrefix(string(b), "garbage") {
		t.Fatal("the corrupt store was overwritten")
	}
}
