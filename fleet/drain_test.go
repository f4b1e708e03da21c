package fleet

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/diffrouter/diffusion-router/envoyadmin"
	"github.com/diffrouter/diffusion-router/registry"
)

func TestDrainWaitsForEveryEnvoy(t *testing.T) {
	envoys := newFakeEnvoys("a", "b")
	m, rec, key, hp := fakeManager(t, envoys, Config{DrainTimeout: time.Minute})
	envoys.set("a", hp, envoyadmin.HostStats{RqActive: 2})
	envoys.set("b", hp, envoyadmin.HostStats{RqActive: 0})

	w, _, err := m.Remove(context.Background(), key)
	if err != nil || w.State != registry.StateDraining {
		t.Fatalf("remove = %+v, %v", w, err)
	}
	// Envoy a still has requests in flight, then its admin goes silent:
	// the worker stays while either holds.
	envoys.set("a", hp, envoyadmin.HostStats{RqActive: 1})
	envoys.setDown("a", true)
	envoys.set("a", hp, envoyadmin.HostStats{RqActive: 0})
	if _, gone := m.Registry().Get(key); !gone {
		t.Fatal("the worker left while an Envoy had requests in flight")
	}
	before := envoys.endpointReads()
	until(t, "three more drain polls", func() bool { return envoys.endpointReads() >= before+3 })
	if _, ok := m.Registry().Get(key); !ok {
		t.Fatal("the worker left while an Envoy's admin could not be read")
	}
	envoys.setDown("a", false)
	// A request Envoy b picked the worker for, still waiting for a
	// connection, holds the drain too.
	envoys.setPending("b", 1)
	before = envoys.endpointReads()
	until(t, "three more drain polls", func() bool { return envoys.endpointReads() >= before+3 })
	if _, ok := m.Registry().Get(key); !ok {
		t.Fatal("the worker left while a request was pending for it")
	}
	envoys.setPending("b", 0)
	until(t, "the drained worker to leave", func() bool { _, ok := m.Registry().Get(key); return !ok })
	// The drain records its transition just after the worker leaves.
	until(t, "the drain's transition", func() bool { return rec.count() >= 2 })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	want := [][3]string{{"active", "draining", "removed"}, {"draining", "removed", "drained"}}
	if len(rec.seen) != 2 || rec.seen[0] != want[0] || rec.seen[1] != want[1] {
		t.Fatalf("transitions %v, want %v", rec.seen, want)
	}
}

// TestDrainOutwaitsALateThread: an Envoy worker thread that took the
// drain late sends the worker one more request right after the first empty
// reading; the drain must not end on that reading.
func TestDrainOutwaitsALateThread(t *testing.T) {
	envoys := newFakeEnvoys("a")
	m, _, key, hp := fakeManager(t, envoys, Config{DrainTimeout: time.Minute})
	late := false
	envoys.afterRead = func(f *fakeEnvoys) {
		if !late {
			late = true
			h := f.hosts["a"][hp]
			h.RqActive = 1
			f.hosts["a"][hp] = h
		}
	}
	if _, _, err := m.Remove(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	gone := func() bool { _, ok := m.Registry().Get(key); return !ok }
	until(t, "three drain polls or the end of the drain", func() bool { return envoys.endpointReads() >= 3 || gone() })
	if gone() {
		t.Fatal("the drain ended on one empty reading while a late request was in flight")
	}
	envoys.set("a", hp, envoyadmin.HostStats{RqActive: 0})
	before := envoys.endpointReads()
	until(t, "the drained worker to leave", gone)
	if got := envoys.endpointReads() - before; got < idleReadings {
		t.Fatalf("the drain ended after %d empty readings, want %d", got, idleReadings)
	}
}

func TestDrainTimeoutRemovesAnyway(t *testing.T) {
	envoys := newFakeEnvoys("a")
	m, rec, key, hp := fakeManager(t, envoys, Config{DrainTimeout: 200 * time.Millisecond})
	envoys.set("a", hp, envoyadmin.HostStats{RqActive: 5})
	if _, _, err := m.Remove(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	until(t, "the drain timeout to remove the worker", func() bool { _, ok := m.Registry().Get(key); return !ok })
	until(t, "the drain's transition", func() bool { return rec.count() >= 2 })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.seen) != 2 || rec.seen[1][2] != string(CauseDrained) {
		t.Fatalf("transitions %v", rec.seen)
	}
}

func TestReadmitCancelsDrain(t *testing.T) {
	envoys := newFakeEnvoys("a")
	m, _, key, hp := fakeManager(t, envoys, Config{DrainTimeout: time.Minute, SyncTimeout: time.Second})
	envoys.set("a", hp, envoyadmin.HostStats{RqActive: 1})
	if _, _, err := m.Remove(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	res, err := m.Admit(context.Background(), key)
	if err != nil || !res.Revived || res.Worker.State != registry.StateActive {
		t.Fatalf("re-admit = %+v, %v", res, err)
	}
	envoys.set("a", hp, envoyadmin.HostStats{RqActive: 0})
	// The cancelled drain must not remove the worker now that it is idle.
	m.Wait()
	if w, ok := m.Registry().Get(key); !ok || w.State != registry.StateActive {
		t.Fatalf("after the cancelled drain: %+v (registered %v)", w, ok)
	}
}

// TestDrainWaitsForPickers: with least-work routing a filter picks the
// worker itself, so an idle Envoy is not enough: the drain ends only once
// every picking filter has seen the generation that took the worker out.
func TestDrainWaitsForPickers(t *testing.T) {
	envoys := newFakeEnvoys("a")
	pickers := &pickersAt{}
	m, _, key, hp := fakeManager(t, envoys, Config{DrainTimeout: time.Minute, Pickers: pickers})
	envoys.set("a", hp, envoyadmin.HostStats{RqActive: 0})
	if _, _, err := m.Remove(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	gen := m.Registry().Snapshot().Generation
	until(t, "the drain to ask the pickers", func() bool { pickers.mu.Lock(); defer pickers.mu.Unlock(); return pickers.asked == gen })
	before := envoys.endpointReads()
	pickers.set(gen - 1)
	polls := func() int { pickers.mu.Lock(); defer pickers.mu.Unlock(); return pickers.polls }
	n := polls()
	until(t, "ten more looks at the pickers", func() bool { return polls() >= n+10 })
	if _, ok := m.Registry().Get(key); !ok {
		t.Fatal("the worker left before the filters saw it leave rotation")
	}
	if envoys.endpointReads() != before {
		t.Fatal("the drain polled Envoy before the filters saw the change")
	}
	pickers.set(gen)
	until(t, "the drained worker to leave", func() bool { _, ok := m.Registry().Get(key); return !ok })
}

// TestDrainSpans: a removal's background drain is a child span of the
// removal, ending when the worker leaves, an error when the drain timed out
// with requests in flight.
func TestDrainSpans(t *testing.T) {
	for _, tc := range []struct {
		name    string
		active  uint64
		timeout time.Duration
		failed  bool
	}{
		{"idle", 0, time.Minute, false},
		{"timed out", 3, 200 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spans := tracetest.NewSpanRecorder()
			tracer := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)).Tracer("test")
			envoys := newFakeEnvoys("a")
			m, _, key, hp := fakeManager(t, envoys, Config{DrainTimeout: tc.timeout, Tracer: tracer})
			envoys.set("a", hp, envoyadmin.HostStats{RqActive: tc.active})
			ctx, removal := tracer.Start(context.Background(), "DELETE /workers")
			if _, _, err := m.Remove(ctx, key); err != nil {
				t.Fatal(err)
			}
			removal.End() // the answer goes before the drain ends
			m.Wait()
			if _, ok := m.Registry().Get(key); ok {
				t.Fatal("the worker is still registered after its drain")
			}
			var drain sdktrace.ReadOnlySpan
			for _, s := range spans.Ended() {
				if s.Name() == "fleet drain" {
					drain = s
				}
			}
			if drain == nil {
				t.Fatalf("no drain span among %d ended spans", len(spans.Ended()))
			}
			if drain.Parent().SpanID() != removal.SpanContext().SpanID() || drain.SpanContext().TraceID() != removal.SpanContext().TraceID() {
				t.Fatalf("drain span's parent %v, want the removal's span %v", drain.Parent().SpanID(), removal.SpanContext().SpanID())
			}
			attrs := map[string]string{}
			for _, kv := range drain.Attributes() {
				attrs[string(kv.Key)] = kv.Value.Emit()
			}
			if attrs["diffusion.worker"] != key || attrs["diffusion.drain_outcome"] != "removed" {
				t.Fatalf("drain span attributes %v", attrs)
			}
			if got := drain.Status().Code == codes.Error; got != tc.failed {
				t.Fatalf("drain span status %v, want failed=%v", drain.Status(), tc.failed)
			}
		})
	}
}
