package fleet

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/diffrouter/diffusion-router/registry"
)

// addWorker registers a worker served by h, active.
func addWorker(t *testing.T, reg *registry.Registry, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	u, err := registry.ParseWorkerURL(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Add(u, u.Host, registry.Capabilities{Known: true}, registry.StateActive, ""); err != nil {
		t.Fatal(err)
	}
	return u.String()
}

func TestCallQuarantinesTheFailedAndHoldsTheLock(t *testing.T) {
	m := newManager(t)
	entered, release := make(chan struct{}), make(chan struct{})
	slow := addWorker(t, m.reg, func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		io.WriteString(w, `{"success": true}`)
	})
	failing := addWorker(t, m.reg, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, `{"error": "boom"}`)
	})
	spec := CallSpec{Path: "/v1/set_lora", Body: []byte(`{}`), Quarantine: true,
		Target: func(w registry.Worker) bool { return w.State == registry.StateActive }}
	type result struct {
		out Outcome
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := m.Call(context.Background(), spec)
		done <- result{out, err}
	}()
	<-entered
	// One fleet-wide operation at a time: a second fails fast, naming the first.
	var busy *BusyError
	if _, err := m.Call(context.Background(), spec); !errors.As(err, &busy) || busy.Running == "" || m.Running() != busy.Running {
		t.Fatalf("second call while one runs: %v (running %q)", err, m.Running())
	}
	close(release)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.out.Succeeded != 1 || r.out.Failed != 1 || !slices.Equal(r.out.Quarantined, []string{failing}) {
		t.Fatalf("outcome = %+v, want %s quarantined and %s ok", r.out, failing, slow)
	}
	if w, _ := m.reg.Get(failing); w.State != registry.StateQuarantined {
		t.Fatalf("failed worker is %s, want quarantined", w.State)
	}
	if w, _ := m.reg.Get(slow); w.State != registry.StateActive {
		t.Fatalf("worker that answered is %s, want active", w.State)
	}
	if m.Running() != "" {
		t.Fatalf("operation %q still running after the call returned", m.Running())
	}
}

func TestCallRefusedByAllChangesNothing(t *testing.T) {
	m := newManager(t)
	refuse := func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error": "bad adapter"}`)
	}
	a, b := addWorker(t, m.reg, refuse), addWorker(t, m.reg, refuse)
	out, err := m.Call(context.Background(), CallSpec{Path: "/v1/set_lora", Quarantine: true,
		Target: func(w registry.Worker) bool { return w.State == registry.StateActive }})
	if err != nil {
		t.Fatal(err)
	}
	if !out.Rejected || len(out.Quarantined) != 0 {
		t.Fatalf("outcome = %+v, want rejected with nobody quarantined", out)
	}
	for _, k := range []string{a, b} {
		if w, _ := m.reg.Get(k); w.State != registry.StateActive {
			t.Fatalf("%s is %s after a call every worker refused", k, w.State)
		}
	}
}
