package router

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/diffrouter/diffusion-router/xds/translate"
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

// filterSecret is the key that authenticates worker identities in job ids.
// It is kept in the state directory so that ids stay valid across restarts
// of the control plane when the directory is kept.
func filterSecret(stateDir string) (string, error) {
	path := filepath.Join(stateDir, "filter-secret")
	if b, err := os.ReadFile(path); err == nil {
		s := strings.TrimSpace(string(b))
		if len(s) < 32 {
			return "", fmt.Errorf("%s: secret is too short; delete the file to make a new one", path)
		}
		return s, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read filter secret: %w", err)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	s := hex.EncodeToString(b[:])
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write filter secret: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("write filter secret: %w", err)
	}
	return s, nil
}

// filterOptions builds the filter's configuration, or nil when it is off.
func filterOptions(flag, stateDir string, failClosed, external bool) (*translate.FilterOptions, error) {
	path, err := findFilter(flag, external)
	if err != nil || path == "" {
		return nil, err
	}
	secret, err := filterSecret(stateDir)
	if err != nil {
		return nil, err
	}
	cfg, err := json.Marshal(map[string]any{
		"secret":         secret,
		"max_body_bytes": 64 << 10,
		"fail_closed":    failClosed,
		"fallback_route": translate.RouteModelFallback,
		// sglang-diffusion's defaults for fields a request leaves out.
		"defaults": map[string]int{"steps": 50, "width": 1024, "height": 1024, "video_frames": 81},
	})
	if err != nil {
		return nil, err
	}
	return &translate.FilterOptions{Path: path, Config: string(cfg)}, nil
}
