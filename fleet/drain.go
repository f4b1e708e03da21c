package fleet

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/traces"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// drainer runs the drains of removed workers in the background: each waits
// until no Envoy has a request in flight to its worker, then deletes it.
type drainer struct {
	reg    *registry.Registry
	cfg    Config
	states *states
	envoys *envoyWatch

	mu      sync.Mutex
	running map[string]*drain // worker key -> its drain
	wg      sync.WaitGroup
	baseCtx context.Context
}

// wait blocks until every running drain has finished.
func (dr *drainer) wait() { dr.wg.Wait() }

// drain is one running drain; a pointer, so a finished drain removes only
// its own entry and not a newer one for the same worker.
type drain struct{ cancel context.CancelFunc }

func (dr *drainer) cancel(key string) {
	dr.mu.Lock()
	defer dr.mu.Unlock()
	if d, ok := dr.running[key]; ok {
		d.cancel()
		delete(dr.running, key)
	}
}

// start drains the worker in the background. The drain's span is a child
// of the span in from (the removal that started it), ending when the worker
// leaves or stays; it outlives the removal's answer.
func (dr *drainer) start(from context.Context, key string, gen uint64) {
	ctx, cancel := context.WithTimeout(dr.baseCtx, dr.cfg.DrainTimeout)
	ctx, span := dr.cfg.Tracer.Start(trace.ContextWithSpanContext(ctx, trace.SpanContextFromContext(from)), "fleet drain",
		trace.WithAttributes(attribute.String("diffusion.worker", key), attribute.String("diffusion.drain_timeout", dr.cfg.DrainTimeout.String())))
	d := &drain{cancel: cancel}
	dr.mu.Lock()
	if old, ok := dr.running[key]; ok {
		old.cancel()
	}
	dr.running[key] = d
	dr.mu.Unlock()
	dr.wg.Add(1)
	go func() {
		defer dr.wg.Done()
		outcome := "removed"
		defer func() {
			span.SetAttributes(attribute.String("diffusion.drain_outcome", outcome))
			span.End()
			cancel()
			dr.mu.Lock()
			if dr.running[key] == d {
				delete(dr.running, key)
			}
			dr.mu.Unlock()
		}()
		idle := dr.waitIdle(ctx, key, gen)
		if dr.baseCtx.Err() != nil {
			outcome = "stopped: the control plane is shutting down"
			return
		}
		if errors.Is(ctx.Err(), context.Canceled) {
			outcome = "cancelled: the worker was re-admitted or quarantined"
			return
		}
		// Only a worker still draining goes: a re-admission wins.
		if _, err := dr.reg.Delete(key, registry.StateDraining); err != nil {
			outcome = "kept: " + err.Error()
			return
		}
		detail := "its requests finished"
		if !idle {
			detail = "drain timeout (" + dr.cfg.DrainTimeout.String() + ") with requests still in flight"
			traces.Fail(span, detail)
		}
		dr.states.record(key, registry.StateDraining, StateGone, CauseDrained, detail)
	}()
}

// idleReadings is how many empty in-flight readings in a row end a drain.
const idleReadings = 2

// waitIdle polls every connected Envoy until none has a request in flight to
// the worker, twice in a row. It returns false if ctx ended first.
//
// Once is not enough: Envoy acknowledges a configuration when its main
// thread has applied it, and each worker thread takes it on its next
// event-loop turn. A thread that is late (a loaded machine) can still send
// the worker a request after the first empty reading; the second reading,
// one poll later, counts it.
func (dr *drainer) waitIdle(ctx context.Context, key string, gen uint64) bool {
	if _, err := dr.envoys.inForce(ctx, gen); err != nil {
		return false
	}
	u, err := registry.ParseWorkerURL(key)
	if err != nil {
		return false
	}
	w, ok := dr.reg.Get(u.String())
	if !ok {
		return true // gone: nothing can be in flight through the router
	}
	addr := net.JoinHostPort(w.Address, strconv.Itoa(int(u.Port)))
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for quiet := 0; ; {
		if dr.envoys.inFlight(ctx, addr) == 0 {
			quiet++
		} else {
			quiet = 0
		}
		if quiet == idleReadings {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}
