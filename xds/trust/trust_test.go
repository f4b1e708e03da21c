package trust

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestEnsureMakesOnceAndKeeps(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "xds-tls")
	made, err := Ensure(dir, Owners{})
	if err != nil || !made {
		t.Fatalf("first Ensure: made=%v err=%v", made, err)
	}
	secret, err := JobSecret(dir)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, EnvoyDir, CertFile))
	made, err = Ensure(dir, Owners{})
	if err != nil || made {
		t.Fatalf("second Ensure: made=%v err=%v, want the existing files kept", made, err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, EnvoyDir, CertFile))
	again, _ := JobSecret(dir)
	if string(before) != string(after) || again != secret {
		t.Fatal("Ensure replaced existing credentials")
	}
	for _, f := range []string{filepath.Join(ControlPlaneDir, KeyFile), filepath.Join(EnvoyDir, KeyFile), filepath.Join(EnvoyDir, JobSecretFile)} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s is readable by others: %v", f, st.Mode())
		}
	}
}

func TestEnsureRefusesAPartialDirectory(t *testing.T) {
	dir := t.TempDir()
	if _, err := Ensure(dir, Owners{}); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, CAFile)) // a run that stopped before the end
	before, _ := os.ReadFile(filepath.Join(dir, EnvoyDir, KeyFile))
	if _, err := Ensure(dir, Owners{}); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Fatalf("Ensure on a partial directory: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, EnvoyDir, KeyFile)); string(after) != string(before) {
		t.Fatal("Ensure replaced an Envoy key")
	}
}

// A side that may not read the other side's files still gets its own.
func TestEnsureReadsOnlyTheAuthority(t *testing.T) {
	// The Envoy side's directory is taken away entirely (tests may run as
	// root, who reads everything whatever the permissions).
	dir := t.TempDir()
	if _, err := Ensure(dir, Owners{}); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, EnvoyDir), filepath.Join(t.TempDir(), "elsewhere")); err != nil {
		t.Fatal(err)
	}
	if made, err := Ensure(dir, Owners{}); err != nil || made {
		t.Fatalf("Ensure without the envoy/ side = %v, %v; want kept as it is", made, err)
	}
	if _, err := ServerTLS(dir); err != nil {
		t.Fatalf("the control plane's side: %v", err)
	}
}

func TestEnsureRefusesDamage(t *testing.T) {
	cases := map[string]func(dir string){
		"a file missing": func(dir string) { os.Remove(filepath.Join(dir, EnvoyDir, KeyFile)) },
		"a short secret": func(dir string) { os.WriteFile(filepath.Join(dir, EnvoyDir, JobSecretFile), []byte("short\n"), 0o600) },
		"a garbled key":  func(dir string) { os.WriteFile(filepath.Join(dir, ControlPlaneDir, KeyFile), []byte("nope"), 0o600) },
		"swapped sides": func(dir string) {
			for _, f := range []string{CertFile, KeyFile} {
				b, _ := os.ReadFile(filepath.Join(dir, EnvoyDir, f))
				os.WriteFile(filepath.Join(dir, ControlPlaneDir, f), b, 0o600)
			}
		},
	}
	for name, damage := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := Ensure(dir, Owners{}); err != nil {
				t.Fatal(err)
			}
			damage(dir)
			if err := Check(dir); err == nil {
				t.Fatal("Check accepted a damaged directory")
			} else if !strings.Contains(err.Error(), dir) && !strings.Contains(err.Error(), "xDS credentials") && !strings.Contains(err.Error(), "job secret") {
				t.Fatalf("error does not say what is wrong: %v", err)
			}
		})
	}
}

// handshake runs one TLS exchange between the server config and a client
// config over loopback; it returns the server's error.
func handshake(t *testing.T, server, client *tls.Config) error {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		conn, err := net.Dial("tcp", lis.Addr().String())
		if err != nil {
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		c := tls.Client(conn, client)
		if c.Handshake() == nil {
			io.WriteString(c, "x")
		}
	}()
	conn, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	s := tls.Server(conn, server)
	if err := s.Handshake(); err != nil {
		return err
	}
	_, err = io.ReadFull(s, make([]byte, 1))
	return err
}

func TestOnlyTheEnvoyCertificateGetsIn(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	for _, d := range []string{dir, other} {
		if _, err := Ensure(d, Owners{}); err != nil {
			t.Fatal(err)
		}
	}
	server, err := ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	good, err := ClientTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, server, good); err != nil {
		t.Fatalf("the Envoys' certificate was refused: %v", err)
	}

	foreign, err := ClientTLS(other)
	if err != nil {
		t.Fatal(err)
	}
	foreign.RootCAs = good.RootCAs // it trusts the server; the server must not trust it
	noCert := good.Clone()
	noCert.Certificates = nil
	// The server's own certificate, presented as a client's.
	serverAsClient := good.Clone()
	serverAsClient.Certificates = server.Certificates
	for name, c := range map[string]*tls.Config{"another authority": foreign, "no certificate": noCert, "the server's certificate": serverAsClient} {
		if err := handshake(t, server, c); err == nil {
			t.Errorf("%s: handshake succeeded, want refused", name)
		}
	}
}

func TestEnvoyFilesIn(t *testing.T) {
	f := EnvoyFilesIn("/etc/envoy/xds-tls")
	if f.CA != "/etc/envoy/xds-tls/ca.pem" || f.Cert != "/etc/envoy/xds-tls/envoy/cert.pem" || f.Key != "/etc/envoy/xds-tls/envoy/key.pem" {
		t.Fatalf("EnvoyFilesIn = %+v", f)
	}
}

// TestControlPlaneHasItsOwnJobSecret: the control plane gets its own copy
// of the job-id secret (in compose it cannot read envoy/); a directory made
// before there was one gets it from Ensure, where envoy/ is readable, and
// the control plane falls back to the Envoys' copy where not.
func TestControlPlaneHasItsOwnJobSecret(t *testing.T) {
	dir := t.TempDir()
	if _, err := Ensure(dir, Owners{}); err != nil {
		t.Fatal(err)
	}
	cp, err := ControlPlaneJobSecret(dir)
	if err != nil {
		t.Fatal(err)
	}
	if envoy, _ := JobSecret(dir); cp != envoy || len(cp) < MinJobSecret {
		t.Fatalf("control plane's secret %q, Envoys' %q", cp, envoy)
	}
	if err := Check(dir); err != nil {
		t.Fatal(err)
	}
	// An older directory: only envoy/ has the secret.
	if err := os.Remove(filepath.Join(dir, ControlPlaneDir, JobSecretFile)); err != nil {
		t.Fatal(err)
	}
	if got, err := ControlPlaneJobSecret(dir); err != nil || got != cp {
		t.Fatalf("fallback = %q %v", got, err)
	}
	if made, err := Ensure(dir, Owners{}); made || err != nil {
		t.Fatalf("Ensure of a complete directory = %v %v", made, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, ControlPlaneDir, JobSecretFile))
	if err != nil || strings.TrimSpace(string(b)) != cp {
		t.Fatalf("Ensure did not add the control plane's copy: %q %v", b, err)
	}
	if st, _ := os.Stat(filepath.Join(dir, ControlPlaneDir, JobSecretFile)); st.Mode().Perm() != 0o600 {
		t.Fatalf("the copy's mode is %v", st.Mode().Perm())
	}
	// Copies that differ are an error.
	if err := os.WriteFile(filepath.Join(dir, ControlPlaneDir, JobSecretFile), []byte(strings.Repeat("f", 64)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Check(dir); err == nil {
		t.Fatal("Check accepted two different secrets")
	}
}
