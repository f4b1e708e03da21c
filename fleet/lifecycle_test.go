package fleet

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/diffrouter/diffusion-router/registry"
)

var allStates = []registry.State{StateNew, registry.StatePending, registry.StateActive, registry.StateDraining,
	registry.StateUpdating, registry.StateQuarantined, StateGone}

// TestLifecycleTable checks every (state, cause) pair against the legal
// transitions written out here by hand, so a change to the lifecycle table
// is a deliberate change to this list too.
func TestLifecycleTable(t *testing.T) {
	const (
		N = StateNew
		P = registry.StatePending
		A = registry.StateActive
		D = registry.StateDraining
		U = registry.StateUpdating
		Q = registry.StateQuarantined
		G = StateGone
	)
	legal := map[Cause]map[registry.State]registry.State{
		CauseAdded:              {N: A},
		CauseJoining:            {N: P},
		CauseCatchUp:            {Q: P, D: P},
		CauseCaughtUp:           {P: A},
		CauseReadmitted:         {Q: A, D: A},
		CauseRemoved:            {A: D, U: D},
		CauseRemovedNow:         {A: G, P: G, Q: G},
		CauseDrained:            {D: G},
		CauseMarkedDead:         {A: Q, P: Q, U: Q, Q: Q},
		CauseEjected:            {A: Q},
		CauseProbeFailed:        {A: Q},
		CauseCallFailed:         {A: Q},
		CauseChecksumMismatch:   {A: Q, P: Q, U: Q, Q: Q},
		CauseRestartInterrupted: {U: Q, P: Q},
		CauseStalled:            {A: Q},
		CauseUpdateStarted:      {A: U},
		CauseUpdated:            {U: A},
		CauseUpdateRejected:     {U: A},
		CauseUpdateFailed:       {A: Q, U: Q},
		CauseCatchUpFailed:      {P: Q},
	}
	if len(legal) != len(lifecycle) {
		t.Fatalf("the lifecycle has %d causes, this test knows %d", len(lifecycle), len(legal))
	}
	for cause, moves := range legal {
		for _, from := range allStates {
			to, err := Next(from, cause)
			want, ok := moves[from]
			switch {
			case ok && (err != nil || to != want):
				t.Errorf("%s from %s = %s, %v; want %s", cause, from, to, err, want)
			case !ok && err == nil:
				t.Errorf("%s from %s = %s; want refused", cause, from, to)
			}
		}
	}
	if _, err := Next(registry.StateActive, Cause("made-up")); err == nil {
		t.Error("an unknown cause was accepted")
	}
}

type transitionLog struct {
	mu   sync.Mutex
	seen [][3]string
}

func (r *transitionLog) Probe(bool)                         {}
func (r *transitionLog) WeightUpdate(string, time.Duration) {}
func (r *transitionLog) Transition(from, to, cause string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, [3]string{from, to, cause})
}

func (r *transitionLog) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

func TestMoveWritesLogsAndCountsOnce(t *testing.T) {
	logger, hook := test.NewNullLogger()
	logger.SetOutput(io.Discard)
	logger.SetLevel(logrus.DebugLevel)
	rec := &transitionLog{}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	reg := registry.New(nil)
	m := NewManager(ctx, reg, noEnvoys{}, Config{ProbeTimeout: time.Second, Recorder: rec}, logger.WithField("t", t.Name()))
	u, err := registry.ParseWorkerURL("http://127.0.0.1:30001")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Add(u, "127.0.0.1", registry.Capabilities{}, registry.StateActive, ""); err != nil {
		t.Fatal(err)
	}
	key := u.String()

	w, _, err := m.states.move(key, CauseProbeFailed, "health check failed 3 times in a row")
	if err != nil || w.State != registry.StateQuarantined || w.Reason != "health check failed 3 times in a row" {
		t.Fatalf("move = %+v, %v", w, err)
	}
	entries := hook.AllEntries()
	if len(entries) != 1 || entries[0].Level != logrus.ErrorLevel || entries[0].Data["cause"] != CauseProbeFailed ||
		entries[0].Data["from"] != registry.StateActive || entries[0].Data["to"] != registry.StateQuarantined {
		t.Fatalf("log = %+v", entries)
	}
	if len(rec.seen) != 1 || rec.seen[0] != [3]string{"active", "quarantined", "probe_failed"} {
		t.Fatalf("counted %v", rec.seen)
	}

	// Illegal: an ejection of a quarantined worker changes nothing, and
	// neither logs nor counts.
	if _, _, err := m.states.move(key, CauseEjected, "again"); !errors.Is(err, registry.ErrConflict) {
		t.Fatalf("ejecting a quarantined worker: %v, want a conflict", err)
	}
	// A caller that read another state than the cause allows is refused
	// before the registry is touched.
	if _, _, err := m.states.move(key, CauseReadmitted, "", registry.StateActive); !errors.Is(err, registry.ErrConflict) {
		t.Fatalf("readmit expecting active: %v", err)
	}
	if got, _ := reg.Get(key); got.State != registry.StateQuarantined || got.Reason != "health check failed 3 times in a row" {
		t.Fatalf("refused moves changed the worker: %+v", got)
	}
	if len(hook.AllEntries()) != 1 || len(rec.seen) != 1 {
		t.Fatalf("refused moves were logged or counted: %d lines, %v", len(hook.AllEntries()), rec.seen)
	}

	// The operator takes it back: one more line, one more count.
	if w, _, err := m.states.move(key, CauseReadmitted, ""); err != nil || w.State != registry.StateActive {
		t.Fatalf("readmit = %+v, %v", w, err)
	}
	if len(rec.seen) != 2 || rec.seen[1] != [3]string{"quarantined", "active", "readmitted"} {
		t.Fatalf("counted %v", rec.seen)
	}
}
