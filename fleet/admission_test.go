package fleet

import (
	"context"
	"errors"
	"testing"

	"github.com/diffrouter/diffusion-router/registry"
)

func TestAdmitUnreachableWorkerRegistersWithWarning(t *testing.T) {
	m := newManager(t)
	res, err := m.Admit(context.Background(), "http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if !res.Created || res.HealthError == "" || res.Worker.Caps.Known {
		t.Fatalf("result = %+v", res)
	}
	// Quarantined workers are re-admitted only when /health passes.
	if _, _, err := m.Quarantine(context.Background(), res.Worker.Key(), CauseMarkedDead, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Admit(context.Background(), "http://127.0.0.1:1/"); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("re-admit of unreachable worker: %v", err)
	}
	if w, _ := m.reg.Get(res.Worker.Key()); w.State != registry.StateQuarantined {
		t.Fatalf("state = %s", w.State)
	}
}
