package publish

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/wire"
	"github.com/diffrouter/diffusion-router/xds/translate"
)

var testOptions = translate.Options{ListenAddress: "127.0.0.1", ListenPort: 30080, Policy: wire.PolicyLeastRequest, RegistryAddress: "127.0.0.1", RegistryPort: 18080, MaxConnections: 100, Timeout: time.Minute, ConnectTimeout: time.Second, HealthCheckInterval: time.Second, HealthCheckTimeout: time.Second, HealthCheckFailureThreshold: 3, OutlierConsecutiveFailures: 3}

type recordingSink struct {
	mu   sync.Mutex
	gens []uint64
	eps  []int
}

func (s *recordingSink) Publish(_ context.Context, gen uint64, res translate.Resources) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gens = append(s.gens, gen)
	s.eps = append(s.eps, len(res.Endpoints))
	return nil
}

func (s *recordingSink) last() (uint64, int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.gens) == 0 {
		return 0, 0, 0
	}
	return s.gens[len(s.gens)-1], s.eps[len(s.eps)-1], len(s.gens)
}

func TestEveryChangeIsPublished(t *testing.T) {
	reg := registry.New(nil)
	sink := &recordingSink{}
	pushes := 0
	var mu sync.Mutex
	l := logrus.New()
	l.SetOutput(io.Discard)
	p := &Publisher{Registry: reg, Sink: sink, Log: l.WithField("t", t.Name()),
		Options: testOptions,
		Pushed:  func() { mu.Lock(); pushes++; mu.Unlock() }}
	if err := p.Once(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	u, _ := registry.ParseWorkerURL("http://127.0.0.1:30001")
	res, err := reg.Add(u, "127.0.0.1", registry.Capabilities{Known: true, TaskTypes: []string{"T2I"}}, registry.StateActive, "")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		gen, _, _ := sink.last()
		if gen >= res.Generation {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("generation %d was not published (last %d)", res.Generation, gen)
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if _, _, n := sink.last(); pushes != n || n < 2 {
		t.Fatalf("%d pushes counted for %d published snapshots", pushes, n)
	}
}

// Run does not publish again what Once just published, but does publish a
// change made between the two.
func TestRunStartsFromWhatOncePublished(t *testing.T) {
	for _, changeBetween := range []bool{false, true} {
		reg := registry.New(nil)
		sink := &recordingSink{}
		l := logrus.New()
		l.SetOutput(io.Discard)
		p := &Publisher{Registry: reg, Sink: sink, Log: l.WithField("t", t.Name()), Options: testOptions}
		if err := p.Once(context.Background()); err != nil {
			t.Fatal(err)
		}
		if changeBetween {
			u, _ := registry.ParseWorkerURL("http://127.0.0.1:30001")
			if _, err := reg.Add(u, "127.0.0.1", registry.Capabilities{Known: true}, registry.StateActive, ""); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // Run does its start-up step, then stops
		if err := p.Run(ctx); err != nil {
			t.Fatal(err)
		}
		want := 1
		if changeBetween {
			want = 2
		}
		if _, _, n := sink.last(); n != want {
			t.Errorf("change between Once and Run = %v: %d publications, want %d", changeBetween, n, want)
		}
	}
}
