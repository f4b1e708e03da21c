package main

import (
	"errors"
	"io/fs"
	"slices"
	"strings"
	"testing"

	"github.com/diffrouter/diffusion-router/xds/trust"
)

func TestWithSecret(t *testing.T) {
	files := map[string]string{defaultSecretFile: "abc123\n", "/other": "def456", "/empty": " \n"}
	read := func(p string) ([]byte, error) {
		if s, ok := files[p]; ok {
			return []byte(s), nil
		}
		return nil, fs.ErrPermission
	}
	for _, tc := range []struct {
		name string
		env  []string
		want string // the secret Envoy gets; "" for an error
	}{
		{"from the volume", []string{"PATH=/bin"}, "abc123"},
		{"already set", []string{trust.JobSecretEnv + "=given"}, "given"},
		{"blank counts as unset", []string{trust.JobSecretEnv + "= "}, "abc123"},
		{"another file", []string{secretFileEnv + "=/other"}, "def456"},
		{"unreadable file", []string{secretFileEnv + "=/nope"}, ""},
		{"empty file", []string{secretFileEnv + "=/empty"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, err := withSecret(tc.env, read)
			if tc.want == "" {
				if err == nil || !errors.Is(err, fs.ErrPermission) && !strings.Contains(err.Error(), "empty") {
					t.Fatalf("= %v, %v; want an error", env, err)
				}
				return
			}
			if err != nil || !slices.Contains(env, trust.JobSecretEnv+"="+tc.want) {
				t.Fatalf("= %v, %v; want %s", env, err, tc.want)
			}
			n := 0
			for _, kv := range env {
				if strings.HasPrefix(kv, trust.JobSecretEnv+"=") {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("the secret is set %d times: %v", n, env)
			}
		})
	}
}
