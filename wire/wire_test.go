package wire

import (
	"encoding/json"
	"testing"
)

func TestClassOf(t *testing.T) {
	tests := []struct {
		path string
		want Class
	}{
		{"/v1/images/generations", ClassGeneration},
		{"/v1/images/edits", ClassGeneration},
		{"/v1/videos", ClassGeneration},
		{"/generate", ClassGeneration},
		{"/generate_video?x=1", ClassGeneration},
		{"/v1/diffusion/generate", ClassGeneration},
		{"/v1/videos/abc", ClassJob},
		{"/v1/videos/abc/content", ClassJob},
		{"/v1/videos//abc", ClassJob},
		{"/v1/images/abc/content", ClassJob},
		{"/update_weights_from_disk", ClassFleetCall},
		{"/v1/set_lora", ClassFleetCall},
		{"/add_worker", ClassRegistry},
		{"/workers/http%3A%2F%2Fh%3A1", ClassRegistry},
		{"/v1/models", ClassRegistry},
		{"/v1/models/flux", ClassRegistry},
		{"/v1/list_loras", ClassWorker},
		{"/v1/model_info", ClassWorker},
		{"/metrics", ClassWorker},
	}
	for _, tt := range tests {
		if got := ClassOf(tt.path); got != tt.want {
			t.Errorf("ClassOf(%q) = %s, want %s", tt.path, got, tt.want)
		}
	}
}

func TestRegistryPathsHoldTheFleetCalls(t *testing.T) {
	seen := map[string]bool{}
	for _, p := range RegistryPaths {
		if seen[p] {
			t.Errorf("%s listed twice", p)
		}
		seen[p] = true
	}
	for _, p := range FleetCallPaths {
		if !seen[p] {
			t.Errorf("fleet call %s is not a registry path: Envoy would send it to one worker", p)
		}
	}
}

func TestFilterConfig(t *testing.T) {
	c := DefaultFilterConfig()
	if err := c.Validate(); err == nil {
		t.Fatal("a configuration without a secret is valid")
	}
	c.Secret = "0123456789abcdef"
	if err := c.Validate(); err != nil {
		t.Fatalf("default configuration with a secret: %v", err)
	}
	for name, bad := range map[string]func(*FilterConfig){
		"body limit above the hold": func(c *FilterConfig) { c.MaxBodyBytes = MaxHeldBytes + 1 },
		"no body limit":             func(c *FilterConfig) { c.MaxBodyBytes = 0 },
		"zero steps":                func(c *FilterConfig) { c.Defaults.Steps = 0 },
		"short secret":              func(c *FilterConfig) { c.Secret = "short" },
	} {
		b := c
		bad(&b)
		if err := b.Validate(); err == nil {
			t.Errorf("%s: valid", name)
		}
	}
	// What the control plane sends never carries a secret.
	c.Secret, c.SecretEnv = "", "X"
	out, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	if _, has := m["secret"]; has {
		t.Fatalf("marshalled configuration has a secret field: %s", out)
	}
}
