package fleet

import (
	"slices"
	"testing"

	"github.com/diffrouter/diffusion-router/registry"
)

func TestLastHolders(t *testing.T) {
	w := func(port, version string, state registry.State) registry.Worker {
		u, _ := registry.ParseWorkerURL("http://10.0.0.1:" + port)
		return registry.Worker{URL: u, State: state, WeightVersion: version}
	}
	a, b, c, d := w("1", "0", registry.StateActive), w("2", "0", registry.StateActive), w("3", "1", registry.StateActive), w("4", "0", registry.StateQuarantined)
	snap := registry.Snapshot{Workers: []registry.Worker{a, b, c, d}}
	for _, tc := range []struct {
		name  string
		batch []registry.Worker
		want  []string
	}{
		{"another worker holds it", []registry.Worker{a}, nil},
		{"the last two holding 0", []registry.Worker{a, b}, []string{"0"}},
		{"the only one holding 1", []registry.Worker{c}, []string{"1"}},
		{"a quarantined holder does not count", []registry.Worker{a, b, c}, []string{"0", "1"}},
	} {
		if got := lastHolders(snap, tc.batch); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
