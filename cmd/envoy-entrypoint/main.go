// Command envoy-entrypoint starts Envoy with the router's job-id secret in
// its environment, from where the Wasm filter reads it: Envoy's
// configuration is readable on its admin port, its environment is not. The
// secret comes from the credentials directory the control plane shares
// with its Envoys (package xds/trust), or from the environment already.
// It is a static binary, so the Envoy image needs no shell.
package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/diffrouter/diffusion-router/xds/trust"
)

// Where the image keeps Envoy and the credentials volume.
const (
	envoyBinary       = "/usr/local/bin/envoy"
	defaultSecretFile = "/etc/envoy/xds-tls/" + trust.EnvoyDir + "/" + trust.JobSecretFile
	// SecretFileEnv names another file to read the secret from.
	secretFileEnv = "DIFFUSION_ROUTER_JOB_SECRET_FILE"
)

func main() {
	env, err := withSecret(os.Environ(), os.ReadFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "envoy-entrypoint:", err)
		os.Exit(1)
	}
	argv := append([]string{envoyBinary}, os.Args[1:]...)
	if err := syscall.Exec(envoyBinary, argv, env); err != nil {
		fmt.Fprintf(os.Stderr, "envoy-entrypoint: exec %s: %v\n", envoyBinary, err)
		os.Exit(1)
	}
}

// withSecret returns env with the job-id secret set: as it is when env
// has it, else read from the secret file.
func withSecret(env []string, read func(string) ([]byte, error)) ([]string, error) {
	file := defaultSecretFile
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		switch {
		case k == trust.JobSecretEnv && strings.TrimSpace(v) != "":
			return env, nil
		case k == secretFileEnv && v != "":
			file = v
		}
	}
	b, err := read(file)
	if err != nil {
		return nil, fmt.Errorf("cannot read the job-id secret: %w (mount the router's xds-tls directory at /etc/envoy/xds-tls, or set %s)", err, trust.JobSecretEnv)
	}
	secret := strings.TrimSpace(string(b))
	if secret == "" {
		return nil, fmt.Errorf("the job-id secret file %s is empty", file)
	}
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, trust.JobSecretEnv+"=") {
			out = append(out, kv)
		}
	}
	return append(out, trust.JobSecretEnv+"="+secret), nil
}
