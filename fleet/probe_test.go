package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/registry"
)

func TestProbeQuarantinesAfterThreshold(t *testing.T) {
	envoys := newFakeEnvoys("a")
	m, rec, key, _ := fakeManager(t, envoys, Config{FailureThreshold: 2, HealthInterval: time.Hour})
	bad, err := registry.ParseWorkerURL("http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.reg.Add(bad, "127.0.0.1", registry.Capabilities{Known: true}, registry.StateActive, ""); err != nil {
		t.Fatal(err)
	}
	m.probes.probeOnce(context.Background())
	if w, _ := m.Registry().Get(bad.String()); w.State != registry.StateActive {
		t.Fatalf("quarantined after one failure: %+v", w)
	}
	m.probes.probeOnce(context.Background())
	if w, _ := m.Registry().Get(bad.String()); w.State != registry.StateQuarantined {
		t.Fatalf("not quarantined after two failures: %+v", w)
	}
	if w, _ := m.Registry().Get(key); w.State != registry.StateActive {
		t.Fatalf("the healthy worker changed: %+v", w)
	}
	if len(rec.seen) != 1 || rec.seen[0] != [3]string{"active", "quarantined", "probe_failed"} {
		t.Fatalf("transitions %v", rec.seen)
	}
}
