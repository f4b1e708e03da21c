package envoy

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"sigs.k8s.io/yaml"

	"github.com/diffrouter/diffusion-router/xds/trust"
)

func TestRender(t *testing.T) {
	tlsFiles := trust.EnvoyFilesIn("/etc/envoy/xds-tls")
	out, err := Render(Bootstrap{NodeID: "n1", AdminAddress: "127.0.0.1", AdminPort: 9901, XDSAddress: "127.0.0.1", XDSPort: 18000, TLS: tlsFiles})
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(out, &doc); err != nil {
		t.Fatalf("bootstrap is not YAML: %v\n%s", err, out)
	}
	node := doc["node"].(map[string]any)
	if node["id"] != "n1" || node["metadata"].(map[string]any)["admin_address"] != "127.0.0.1:9901" {
		t.Fatalf("node = %v", node)
	}
	if !strings.Contains(string(out), "port_value: 18000") || !strings.Contains(string(out), "port_value: 9901") {
		t.Fatalf("ports missing:\n%s", out)
	}
	// The xDS connection is mutual TLS, with the server's name checked.
	xdsCluster := doc["static_resources"].(map[string]any)["clusters"].([]any)[0].(map[string]any)
	tlsCtx := xdsCluster["transport_socket"].(map[string]any)["typed_config"].(map[string]any)
	common := tlsCtx["common_tls_context"].(map[string]any)
	pair := common["tls_certificates"].([]any)[0].(map[string]any)
	validation := common["validation_context"].(map[string]any)
	if tlsCtx["sni"] != trust.ServerName ||
		pair["certificate_chain"].(map[string]any)["filename"] != tlsFiles.Cert ||
		pair["private_key"].(map[string]any)["filename"] != tlsFiles.Key ||
		validation["trusted_ca"].(map[string]any)["filename"] != tlsFiles.CA ||
		validation["match_typed_subject_alt_names"].([]any)[0].(map[string]any)["matcher"].(map[string]any)["exact"] != trust.ServerName {
		t.Fatalf("xds_cluster TLS = %v", tlsCtx)
	}
	for _, bad := range []Bootstrap{
		{AdminAddress: "a", AdminPort: 1, XDSAddress: "b", XDSPort: 2, TLS: tlsFiles},
		{NodeID: "n", AdminAddress: "a", AdminPort: 0, XDSAddress: "b", XDSPort: 2, TLS: tlsFiles},
		{NodeID: "n", AdminPort: 1, XDSAddress: "b", XDSPort: 2, TLS: tlsFiles},
		{NodeID: "n", AdminAddress: "a", AdminPort: 1, XDSAddress: "b", XDSPort: 2},
	} {
		if _, err := Render(bad); err == nil {
			t.Errorf("Render(%+v) accepted", bad)
		}
	}
}

// TestSupervisorRestarts runs a stand-in "envoy" that dies at once and
// checks that the supervisor starts it again and stops cleanly.
func TestSupervisorRestarts(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "envoy")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho '[critical][main] simulated crash' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	s := &Supervisor{Bin: bin, ConfigPath: "unused", Log: log.WithField("t", "x"), MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}
	s.Serving() // it served once: later exits are crashes
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for s.Status().Starts < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d starts", s.Status().Starts)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := s.Status().LastExit; got != "exit status 3" {
		t.Fatalf("last exit = %q", got)
	}
}

// TestSupervisorFailsAtStart: an Envoy that exits before it ever served
// (a bad configuration, a port in use) is not restarted: Run returns why.
func TestSupervisorFailsAtStart(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "envoy")
	script := "#!/bin/sh\necho '[info][main] starting' >&2\necho \"[critical][main] error initializing configuration: cannot bind '127.0.0.1:1': Address already in use\" >&2\nexit 1\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	s := &Supervisor{Bin: bin, ConfigPath: "unused", Log: log.WithField("t", "x"), MinBackoff: 5 * time.Millisecond}
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "Address already in use") || !strings.Contains(err.Error(), "exit status 1") {
			t.Fatalf("Run = %v, want the exit and Envoy's error line", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the supervisor restarts an Envoy that never served")
	}
	if n := s.Status().Starts; n != 1 {
		t.Fatalf("%d starts, want 1", n)
	}
}

func TestSupervisorStopsLongRunningProcess(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "envoy")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	s := &Supervisor{Bin: bin, ConfigPath: "unused", Log: log.WithField("t", "x"), StopGrace: time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for s.Status().PID == 0 {
		if time.Now().After(deadline) {
			t.Fatal("never started")
		}
		time.Sleep(5 * time.Millisecond)
	}
	pid := s.Status().PID
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("supervisor did not stop the process")
	}
	if _, err := os.Stat(filepath.Join("/proc", itoa(pid))); err == nil {
		b, _ := os.ReadFile(filepath.Join("/proc", itoa(pid), "stat"))
		if !strings.Contains(string(b), ") Z ") {
			t.Fatalf("process %d still running", pid)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestFindBinary(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "envoy")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := FindBinary(exe); err != nil || got != exe {
		t.Fatalf("flag: %q %v", got, err)
	}
	t.Setenv(EnvVar, exe)
	if got, err := FindBinary(""); err != nil || got != exe {
		t.Fatalf("env: %q %v", got, err)
	}
	if _, err := FindBinary(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing binary accepted")
	}
	if _, err := FindBinary(dir); err == nil {
		t.Fatal("directory accepted")
	}
}
