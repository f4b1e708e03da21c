package tagger

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/diffrouter/diffusion-router/wire"
)

// ParseConfig reads and checks the plugin configuration; getenv reads the
// VM's environment.
func ParseConfig(b []byte, getenv func(string) string) (wire.FilterConfig, error) {
	c := wire.DefaultFilterConfig()
	c.FallbackRoute = ""
	if len(bytes.TrimSpace(b)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			return c, fmt.Errorf("plugin configuration: %w", err)
		}
	}
	if c.Secret == "" && c.SecretEnv != "" {
		c.Secret = strings.TrimSpace(getenv(c.SecretEnv))
		if len(c.Secret) < wire.MinSecret {
			return c, fmt.Errorf("plugin configuration: the environment variable %s (secret_env) must hold at least %d characters; Envoy passes it from its own environment", c.SecretEnv, wire.MinSecret)
		}
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("plugin configuration: %w", err)
	}
	return c, nil
}
