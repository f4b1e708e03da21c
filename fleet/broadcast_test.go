package fleet

import (
	"slices"
	"testing"

	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/wire"
)

// Every fleet-wide path Envoy sends to the control plane has an entry, and
// no entry is unreachable.
func TestBroadcastsCoverTheFleetCalls(t *testing.T) {
	for _, p := range wire.FleetCallPaths {
		b, ok := Broadcasts[p]
		if !ok {
			t.Errorf("%s has no Broadcasts entry", p)
			continue
		}
		if b.Target == nil {
			t.Errorf("%s targets no one", p)
		}
	}
	for p := range Broadcasts {
		if !slices.Contains(wire.FleetCallPaths, p) {
			t.Errorf("Broadcasts has %s, which is not in wire.FleetCallPaths: Envoy would never send it here", p)
		}
	}
}

func TestChecksumMajority(t *testing.T) {
	ok := func(url, sum string) CallResult {
		return CallResult{WorkerURL: url, StatusCode: 200, Body: map[string]any{"checksum": sum}}
	}
	tests := []struct {
		name           string
		results        []CallResult
		wantMajority   string
		wantMismatched []string
		wantConsistent bool
	}{
		{"all agree", []CallResult{ok("a", "x"), ok("b", "x")}, "x", []string{}, true},
		{"one differs", []CallResult{ok("a", "x"), ok("b", "y"), ok("c", "x")}, "x", []string{"b"}, false},
		{"a tie picks the smallest", []CallResult{ok("a", "y"), ok("b", "x")}, "x", []string{"a"}, false},
		{"failures are not counted", []CallResult{ok("a", "x"), {WorkerURL: "b", StatusCode: 500, Body: map[string]any{"checksum": "z"}}}, "x", []string{}, true},
		{"no checksum at all", []CallResult{{WorkerURL: "a", StatusCode: 200, Body: map[string]any{}}}, "", []string{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fields, suspects, reason := checksumMajority(tt.results)
			if fields["checksum"] != tt.wantMajority || !slices.Equal(fields["mismatched"].([]string), tt.wantMismatched) ||
				fields["consistent"] != tt.wantConsistent || !slices.Equal(suspects, tt.wantMismatched) || reason == "" {
				t.Fatalf("fields %v suspects %v reason %q", fields, suspects, reason)
			}
		})
	}
}

func TestNothingToDo(t *testing.T) {
	w := func(state registry.State, sleeping bool) registry.Worker {
		return registry.Worker{State: state, Asleep: sleeping}
	}
	release := Broadcasts["/release_memory_occupation"].NothingToDo
	resume := Broadcasts["/resume_memory_occupation"].NothingToDo
	tests := []struct {
		name                   string
		workers                []registry.Worker
		wantRelease, wantWoken bool
	}{
		{"all asleep", []registry.Worker{w(registry.StateActive, true), w(registry.StateQuarantined, false)}, true, false},
		{"all awake", []registry.Worker{w(registry.StateActive, false)}, false, true},
		{"none active", []registry.Worker{w(registry.StateQuarantined, false)}, false, false},
	}
	for _, tt := range tests {
		snap := registry.Snapshot{Workers: tt.workers}
		if got := release(snap) != ""; got != tt.wantRelease {
			t.Errorf("%s: release says nothing to do = %v", tt.name, got)
		}
		if got := resume(snap) != ""; got != tt.wantWoken {
			t.Errorf("%s: resume says nothing to do = %v", tt.name, got)
		}
	}
}
