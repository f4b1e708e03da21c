// Package trust holds the credentials that tie Envoys to their control
// plane: the certificates of mutual TLS on the xDS connection, and the
// secret with which every Envoy's filter signs job ids.
//
// One directory holds them all, split by who needs what:
//
//	ca.pem                      the authority both sides check the other against
//	control-plane/cert.pem      the xDS server's certificate (SAN ServerName)
//	control-plane/key.pem
//	envoy/cert.pem              the certificate every Envoy presents (SAN ClientName)
//	envoy/key.pem
//	envoy/job-secret            the job-id signing key, given to Envoy in its environment
//
// The authority's private key is thrown away once both certificates are
// signed: nothing else can join, and rotating means making a new directory.
package trust

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Names and files of the layout above.
const (
	// ServerName is the name in the control plane's certificate; Envoy
	// accepts no other, whatever address it dials.
	ServerName = "diffusion-router-xds"
	// ClientName is the name in the Envoys' certificate.
	ClientName = "diffusion-router-envoy"

	CAFile          = "ca.pem"
	ControlPlaneDir = "control-plane"
	EnvoyDir        = "envoy"
	CertFile        = "cert.pem"
	KeyFile         = "key.pem"
	JobSecretFile   = "job-secret"

	// JobSecretEnv is the environment variable that carries the job-id
	// secret into Envoy (and from there into the filter's VM). An
	// environment is not part of the configuration the admin port shows.
	JobSecretEnv = "DIFFUSION_ROUTER_JOB_SECRET"
	// MinJobSecret is the shortest secret accepted, in characters.
	MinJobSecret = 32
)

// Validity of newly made certificates.
const validity = 10 * 365 * 24 * time.Hour

// Owner is a numeric user and group to give files to (when the directory is
// made by root for containers that run as other users).
type Owner struct{ UID, GID int }

// Owners says who owns each side's files; nil keeps the current user.
type Owners struct {
	ControlPlane, Envoy *Owner
}

// EnvoyFiles are the paths an Envoy's bootstrap names, under dir as the
// Envoy sees it.
type EnvoyFiles struct {
	CA, Cert, Key string
}

// EnvoyFilesIn gives the Envoy's paths under dir.
func EnvoyFilesIn(dir string) EnvoyFiles {
	return EnvoyFiles{
		CA:   filepath.Join(dir, CAFile),
		Cert: filepath.Join(dir, EnvoyDir, CertFile),
		Key:  filepath.Join(dir, EnvoyDir, KeyFile),
	}
}

// Ensure makes the directory's credentials unless they are there, and
// reports whether it made them. The authority's certificate is written
// last, so its presence marks a complete directory; Ensure then reads
// nothing else, as the caller may be allowed to read only its own side (in
// compose the control plane cannot read envoy/). Each side's loader
// (ServerTLS, ClientTLS, JobSecret) checks its files; Check checks all. A
// directory with some files but no authority is an error: replacing them
// would lock out the Envoys that use them.
func Ensure(dir string, owners Owners) (bool, error) {
	_, err := os.Stat(filepath.Join(dir, CAFile))
	if err == nil {
		return false, addControlPlaneSecret(dir, owners.ControlPlane)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("xDS credentials: %w", err)
	}
	present, err := presentFiles(dir)
	if err != nil {
		return false, err
	}
	if len(present) > 0 {
		return false, fmt.Errorf("xDS credentials in %s are incomplete (has %s but no %s): remove the directory to make new ones (every Envoy then needs the new envoy/ files)",
			dir, strings.Join(present, ", "), CAFile)
	}
	if err := generate(dir, owners); err != nil {
		return false, fmt.Errorf("make xDS credentials in %s: %w", dir, err)
	}
	return true, nil
}

// Check loads every file of the directory, both sides.
func Check(dir string) error {
	present, err := presentFiles(dir)
	if err != nil {
		return err
	}
	if len(present) != len(allFiles) {
		return fmt.Errorf("xDS credentials in %s are incomplete (has only %s)", dir, strings.Join(present, ", "))
	}
	if _, err := ServerTLS(dir); err != nil {
		return err
	}
	if _, err := ClientTLS(dir); err != nil {
		return err
	}
	envoySecret, err := JobSecret(dir)
	if err != nil {
		return err
	}
	cpSecret, err := ControlPlaneJobSecret(dir)
	if err != nil {
		return err
	}
	if cpSecret != envoySecret {
		return fmt.Errorf("xDS credentials in %s: the control plane's and the Envoys' job-id secrets differ", dir)
	}
	return nil
}

var allFiles = []string{
	CAFile,
	filepath.Join(ControlPlaneDir, CertFile), filepath.Join(ControlPlaneDir, KeyFile), filepath.Join(ControlPlaneDir, JobSecretFile),
	filepath.Join(EnvoyDir, CertFile), filepath.Join(EnvoyDir, KeyFile), filepath.Join(EnvoyDir, JobSecretFile),
}

func presentFiles(dir string) ([]string, error) {
	var present []string
	for _, f := range allFiles {
		_, err := os.Stat(filepath.Join(dir, f))
		switch {
		case err == nil:
			present = append(present, f)
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("xDS credentials: %w", err)
		}
	}
	return present, nil
}

// generate writes a new authority, both certificates and a job secret.
func generate(dir string, owners Owners) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	sn, err := serial()
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "diffusion-router xDS authority"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	sides := []struct {
		sub   string
		name  string
		usage x509.ExtKeyUsage
		owner *Owner
	}{
		{ControlPlaneDir, ServerName, x509.ExtKeyUsageServerAuth, owners.ControlPlane},
		{EnvoyDir, ClientName, x509.ExtKeyUsageClientAuth, owners.Envoy},
	}
	// One job-id secret, a copy on each side: the control plane signs and
	// checks with it, and in compose it cannot read the Envoys' side.
	var secret [32]byte
	if _, err := rand.Read(secret[:]); err != nil {
		return err
	}
	for _, s := range sides {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		sn, err := serial()
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: sn,
			Subject:      pkix.Name{CommonName: s.name},
			DNSNames:     []string{s.name},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(validity),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{s.usage},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		sub := filepath.Join(dir, s.sub)
		if err := os.MkdirAll(sub, 0o700); err != nil {
			return err
		}
		files := map[string][]byte{
			CertFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			KeyFile:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		}
		files[JobSecretFile] = []byte(hex.EncodeToString(secret[:]) + "\n")
		for name, data := range files {
			if err := writeFile(filepath.Join(sub, name), data, 0o600, s.owner); err != nil {
				return err
			}
		}
		if s.owner != nil {
			if err := os.Chown(sub, s.owner.UID, s.owner.GID); err != nil {
				return err
			}
		}
	}
	// The authority's certificate goes last: its presence marks a
	// complete directory.
	return writeFile(filepath.Join(dir, CAFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644, nil)
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
}

// writeFile writes through a temporary name, so a crash leaves no half file.
func writeFile(path string, data []byte, mode os.FileMode, owner *Owner) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if owner != nil {
		if err := os.Chown(tmp, owner.UID, owner.GID); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	return os.Rename(tmp, path)
}

func loadPool(dir string) (*x509.CertPool, error) {
	b, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, fmt.Errorf("xDS credentials: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("xDS credentials: %s holds no certificate", filepath.Join(dir, CAFile))
	}
	return pool, nil
}

func loadPair(dir, side, wantName string) (tls.Certificate, error) {
	certPath, keyPath := filepath.Join(dir, side, CertFile), filepath.Join(dir, side, KeyFile)
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return pair, fmt.Errorf("xDS credentials: %w", err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return pair, fmt.Errorf("xDS credentials %s: %w", certPath, err)
		}
	}
	if !slices.Contains(leaf.DNSNames, wantName) {
		return pair, fmt.Errorf("xDS credentials: %s is not for %s", certPath, wantName)
	}
	if time.Now().After(leaf.NotAfter) {
		return pair, fmt.Errorf("xDS credentials: %s expired on %s; make new credentials", certPath, leaf.NotAfter.Format(time.DateOnly))
	}
	return pair, nil
}

// loadSide reads the authority and one side's certificate and key.
func loadSide(dir, side, name string) (*x509.CertPool, tls.Certificate, error) {
	pool, err := loadPool(dir)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	pair, err := loadPair(dir, side, name)
	return pool, pair, err
}

// ServerTLS is the control plane's side: its certificate, and only Envoys
// with a certificate from the same authority get in.
func ServerTLS(dir string) (*tls.Config, error) {
	pool, pair, err := loadSide(dir, ControlPlaneDir, ServerName)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		NextProtos:   []string{"h2"},
		// The authority signs exactly two certificates; the client's must be
		// the Envoys' one (its key usage alone already excludes the server's).
		VerifyPeerCertificate: requireName(ClientName),
	}, nil
}

// ClientTLS is an Envoy's side, for Go clients that speak xDS in its place
// (tests, tools).
func ClientTLS(dir string) (*tls.Config, error) {
	pool, pair, err := loadSide(dir, EnvoyDir, ClientName)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
		ServerName:   ServerName,
		NextProtos:   []string{"h2"},
	}, nil
}

func requireName(name string) func([][]byte, [][]*x509.Certificate) error {
	return func(_ [][]byte, chains [][]*x509.Certificate) error {
		for _, chain := range chains {
			if len(chain) > 0 && slices.Contains(chain[0].DNSNames, name) {
				return nil
			}
		}
		return fmt.Errorf("peer certificate is not for %s", name)
	}
}

// JobSecret reads the job-id signing secret.
func JobSecret(dir string) (string, error) {
	return readJobSecret(filepath.Join(dir, EnvoyDir, JobSecretFile))
}

// ControlPlaneJobSecret reads the control plane's copy of the job-id
// secret; a directory made before there was one (only envoy/ had it)
// falls back to the Envoys' copy.
func ControlPlaneJobSecret(dir string) (string, error) {
	s, err := readJobSecret(filepath.Join(dir, ControlPlaneDir, JobSecretFile))
	if errors.Is(err, os.ErrNotExist) {
		return JobSecret(dir)
	}
	return s, err
}

// addControlPlaneSecret gives a complete directory made before the control
// plane had its own copy of the job-id secret that copy, when the caller
// can read the Envoys' (xds-certs runs as root for this); otherwise it
// leaves the directory as it is.
func addControlPlaneSecret(dir string, owner *Owner) error {
	cp := filepath.Join(dir, ControlPlaneDir, JobSecretFile)
	if _, err := os.Stat(cp); !errors.Is(err, os.ErrNotExist) {
		return nil // there, or not ours to tell
	}
	b, err := os.ReadFile(filepath.Join(dir, EnvoyDir, JobSecretFile))
	if err != nil {
		return nil // not readable here: the control plane falls back
	}
	if err := writeFile(cp, b, 0o600, owner); err != nil {
		return fmt.Errorf("xDS credentials: add the control plane's job-id secret: %w", err)
	}
	return nil
}

func readJobSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("job secret: %w", err)
	}
	s := string(bytes.TrimSpace(b))
	if len(s) < MinJobSecret {
		return "", fmt.Errorf("job secret %s is shorter than %d characters", path, MinJobSecret)
	}
	return s, nil
}
