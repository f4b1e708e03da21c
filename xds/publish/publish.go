// Package publish is the one-way path from the registry to the Envoys: each
// registry change is translated into Envoy resources and published as a new
// xDS snapshot.
package publish

import (
	"context"
	"fmt"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/xds/translate"
)

// Sink takes a translated generation (xds/server.Server).
type Sink interface {
	Publish(ctx context.Context, generation uint64, res translate.Resources) error
}

// Publisher republishes the registry after every change.
type Publisher struct {
	Registry *registry.Registry
	Sink     Sink
	Options  translate.Options
	// Pushed, if set, is told about every published snapshot (metrics).
	Pushed func()
	// Publishing, if set, gets each registry snapshot before it goes out
	// (the load board tracks which one the Envoys run).
	Publishing func(registry.Snapshot)
	Log        *logrus.Entry

	// published is the last generation Once published (valid once
	// havePublished); Once and Run never run at the same time.
	published     uint64
	havePublished bool
}

// Once translates the registry's current state and publishes it.
func (p *Publisher) Once(ctx context.Context) error {
	snap := p.Registry.Snapshot()
	res, err := translate.Build(snap, p.Options)
	if err != nil {
		return fmt.Errorf("translate generation %d: %w", snap.Generation, err)
	}
	if p.Publishing != nil {
		p.Publishing(snap)
	}
	if err := p.Sink.Publish(ctx, snap.Generation, res); err != nil {
		return err
	}
	p.published, p.havePublished = snap.Generation, true
	if p.Pushed != nil {
		p.Pushed()
	}
	return nil
}

// Run publishes after every registry change until ctx ends. A change that
// cannot be published (a translation bug) is logged; Envoy keeps the last
// good configuration. On start, after subscribing, it publishes the
// registry unless Once already published its current generation, so a
// change made before Run began is not missed and none is translated twice.
func (p *Publisher) Run(ctx context.Context) error {
	changes, unsubscribe := p.Registry.Subscribe()
	defer unsubscribe()
	for first := true; ; first = false {
		if first {
			if p.havePublished && p.Registry.Snapshot().Generation == p.published {
				continue
			}
		} else {
			select {
			case <-ctx.Done():
				return nil
			case <-changes:
			}
		}
		if err := p.Once(ctx); err != nil {
			p.Log.WithError(err).Error("cannot publish the new configuration; Envoy keeps the previous one")
		}
	}
}
