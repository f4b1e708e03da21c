package registry

import (
	"errors"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

func mustURL(t *testing.T, s string) WorkerURL {
	t.Helper()
	u, err := ParseWorkerURL(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func fixedClock() func() time.Time {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	n := 0
	return func() time.Time { n++; return t0.Add(time.Duration(n) * time.Second) }
}

func TestAddIsIdempotentAndBumpsGenerationOnce(t *testing.T) {
	r := New(fixedClock())
	a := mustAdd(t, r, mustURL(t, "http://h:1/"), "10.0.0.1", Capabilities{}, StateActive, "")
	if !a.Created || a.Generation != 1 {
		t.Fatalf("first add: %+v", a)
	}
	b := mustAdd(t, r, mustURL(t, "http://H:1"), "10.0.0.1", Capabilities{}, StatePending, "")
	if b.Created || b.Generation != 1 || b.Worker.State != StateActive {
		t.Fatalf("second add changed state: %+v", b)
	}
	if got := len(r.Snapshot().Workers); got != 1 {
		t.Fatalf("workers = %d, want 1", got)
	}
}

func TestSetStateTransitions(t *testing.T) {
	tests := []struct {
		name    string
		from    []State
		to      State
		reason  string
		wantGen uint64
		wantErr error
	}{
		{name: "same state and reason is a no-op", to: StateActive, wantGen: 1},
		{name: "drain", to: StateDraining, reason: "removed", wantGen: 2},
		{name: "conditional change that matches", from: []State{StateActive}, to: StateQuarantined, reason: "x", wantGen: 2},
		{name: "conditional change that does not match", from: []State{StateDraining}, to: StateActive, wantGen: 1, wantErr: ErrConflict},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(fixedClock())
			key := mustAdd(t, r, mustURL(t, "http://h:1"), "10.0.0.1", Capabilities{}, StateActive, "").Worker.Key()
			w, gen, err := r.setState(key, tt.to, tt.reason, tt.from...)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if gen != tt.wantGen {
				t.Fatalf("generation = %d, want %d", gen, tt.wantGen)
			}
			if tt.wantErr == nil && (w.State != tt.to || w.Reason != tt.reason) {
				t.Fatalf("worker = %+v", w)
			}
		})
	}
	r := New(nil)
	if _, _, err := r.setState("http://nope:1", StateActive, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown worker: err = %v", err)
	}
}

func TestSubscribeCoalescesChanges(t *testing.T) {
	r := New(nil)
	ch, cancel := r.Subscribe()
	defer cancel()
	for i := 1; i <= 3; i++ {
		mustAdd(t, r, mustURL(t, "http://h:"+string(rune('0'+i))), "10.0.0.1", Capabilities{}, StateActive, "")
	}
	select {
	case <-ch:
	default:
		t.Fatal("no notification after changes")
	}
	select {
	case <-ch:
		t.Fatal("changes were not coalesced into one wake-up")
	default:
	}
	if s := r.Snapshot(); s.Generation != 3 || len(s.Workers) != 3 {
		t.Fatalf("snapshot = gen %d, %d workers", s.Generation, len(s.Workers))
	}
}

func TestSnapshotIsACopyAndSorted(t *testing.T) {
	r := New(nil)
	mustAdd(t, r, mustURL(t, "http://b:1"), "10.0.0.2", Capabilities{Known: true, TaskTypes: []string{"T2V"}}, StateActive, "")
	mustAdd(t, r, mustURL(t, "http://a:1"), "10.0.0.1", Capabilities{}, StateActive, "")
	s := r.Snapshot()
	if s.Workers[0].Key() != "http://a:1" || s.Workers[1].Key() != "http://b:1" {
		t.Fatalf("not sorted: %v, %v", s.Workers[0].Key(), s.Workers[1].Key())
	}
	s.Workers[1].Caps.TaskTypes[0] = "T2I"
	w, _ := r.Get("http://b:1")
	if w.Caps.TaskTypes[0] != "T2V" || !w.Caps.Video() {
		t.Fatal("snapshot shares memory with the registry")
	}
	if _, ok := s.Get("http://a:1"); !ok {
		t.Fatal("Snapshot.Get missed a worker")
	}
}

func TestRecordProbeAndDelete(t *testing.T) {
	r := New(nil)
	key := mustAdd(t, r, mustURL(t, "http://h:1"), "10.0.0.1", Capabilities{}, StateActive, "").Worker.Key()
	for want := 1; want <= 3; want++ {
		if n, _ := r.RecordProbe(key, false); n != want {
			t.Fatalf("failures = %d, want %d", n, want)
		}
	}
	if n, _ := r.RecordProbe(key, true); n != 0 {
		t.Fatalf("a passing probe left %d failures", n)
	}
	gen := r.Snapshot().Generation
	if g, err := r.Delete(key); err != nil || g != gen+1 {
		t.Fatalf("delete: gen %d err %v", g, err)
	}
	if _, err := r.Delete(key); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestSetWorkersWeightsIsOneChange(t *testing.T) {
	r := New(nil)
	var keys []string
	for _, u := range []string{"http://a:1", "http://b:1", "http://c:1"} {
		keys = append(keys, mustAdd(t, r, mustURL(t, u), "10.0.0.1", Capabilities{}, StateActive, "").Worker.Key())
	}
	gen := r.Snapshot().Generation
	if g, _ := r.SetWorkersWeights(append(keys, "http://gone:1"), "v2", "/ckpt/2"); g != gen+1 {
		t.Fatalf("generation %d -> %d, want one change", gen, g)
	}
	for _, w := range r.Snapshot().Workers {
		if w.WeightVersion != "v2" || w.ModelPath != "/ckpt/2" {
			t.Fatalf("%s at %s %s", w.Key(), w.WeightVersion, w.ModelPath)
		}
	}
	if g, _ := r.SetWorkersWeights(keys, "v2", "/ckpt/2"); g != gen+1 {
		t.Fatal("an unchanged version bumped the generation")
	}
}

func TestOneServerOneWorker(t *testing.T) {
	tests := []struct {
		a, b [3]string // scheme, address, port
		same bool
	}{
		{[3]string{"http", "127.0.0.1", "9"}, [3]string{"http", "::1", "9"}, true},
		{[3]string{"http", "127.0.0.1", "9"}, [3]string{"http", "::ffff:127.0.0.1", "9"}, true},
		{[3]string{"http", "10.0.0.1", "9"}, [3]string{"http", "10.0.0.1", "9"}, true},
		{[3]string{"http", "127.0.0.1", "9"}, [3]string{"http", "127.0.0.1", "10"}, false},
		{[3]string{"http", "127.0.0.1", "9"}, [3]string{"https", "127.0.0.1", "9"}, false},
		{[3]string{"http", "127.0.0.1", "9"}, [3]string{"http", "127.0.0.2", "9"}, false},
		{[3]string{"http", "10.0.0.1", "9"}, [3]string{"http", "10.0.0.2", "9"}, false},
	}
	for _, tt := range tests {
		port := func(s string) uint32 { n, _ := strconv.Atoi(s); return uint32(n) }
		got := ServerIdentity(tt.a[0], tt.a[1], port(tt.a[2])) == ServerIdentity(tt.b[0], tt.b[1], port(tt.b[2]))
		if got != tt.same {
			t.Errorf("%v and %v: same server %v, want %v", tt.a, tt.b, got, tt.same)
		}
	}

	r := New(nil)
	first, _ := ParseWorkerURL("http://127.0.0.1:9")
	again, _ := ParseWorkerURL("http://[::1]:9")
	if res := mustAdd(t, r, first, "127.0.0.1", Capabilities{}, StateActive, ""); !res.Created {
		t.Fatal("first add did not create")
	}
	gen := r.Snapshot().Generation
	res := mustAdd(t, r, again, "::1", Capabilities{}, StateActive, "")
	if res.Created || !res.SameServer || res.Worker.Key() != first.String() {
		t.Fatalf("second spelling: %+v", res)
	}
	if len(r.Snapshot().Workers) != 1 || r.Snapshot().Generation != gen {
		t.Fatal("second spelling changed the registry")
	}
}

func mustAdd(t *testing.T, r *Registry, u WorkerURL, address string, caps Capabilities, state State, reason string) AddResult {
	t.Helper()
	res, err := r.Add(u, address, caps, state, reason)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestCountsPaused(t *testing.T) {
	cases := []struct {
		name       string
		c          Counts
		holdAsleep bool
		want       bool
	}{
		{"all active", Counts{ByState: map[State]int{StateActive: 2}}, true, false},
		{"one updating", Counts{ByState: map[State]int{StateActive: 1, StateUpdating: 1}}, false, true},
		{"asleep, 503 on sleep", Counts{ByState: map[State]int{StateActive: 2}, Asleep: 2}, false, false},
		{"asleep, held", Counts{ByState: map[State]int{StateActive: 2}, Asleep: 2}, true, true},
	}
	for _, tc := range cases {
		if got := tc.c.Paused(tc.holdAsleep); got != tc.want {
			t.Errorf("%s: Paused(%v) = %v, want %v", tc.name, tc.holdAsleep, got, tc.want)
		}
	}
}

func TestHistory(t *testing.T) {
	r := New(nil)
	for _, v := range []string{"b", "a"} {
		u, _ := ParseWorkerURL("http://10.0.0.1:" + map[string]string{"a": "1", "b": "2"}[v])
		if _, err := r.Add(u, "10.0.0.1", Capabilities{}, StateActive, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := r.SetWorkersWeights([]string{u.String()}, v, "/m/"+v); err != nil {
			t.Fatal(err)
		}
	}
	r.BeginUpdate("step-2")
	snap := r.Snapshot()
	if got := snap.Fleet.History; !slices.Equal(got, []string{"0", "b", "a", "step-2"}) || snap.Fleet.Updating != "step-2" {
		t.Fatalf("history %v, updating %q", got, snap.Fleet.Updating)
	}
	if _, err := r.SetFleetWeights(Weights{Version: "step-2"}); err != nil {
		t.Fatal(err)
	}
	r.EndUpdate()
	w := r.Snapshot().Fleet
	for _, tc := range []struct {
		have, min string
		want      bool
	}{
		{"step-2", "a", true}, {"a", "step-2", false}, {"a", "a", true}, {"b", "a", false}, {"x", "x", true}, {"a", "x", false}, {"x", "a", false},
	} {
		if got := wire.AtLeast(w.History, tc.have, tc.min); got != tc.want {
			t.Errorf("AtLeast(%q, %q) = %v", tc.have, tc.min, got)
		}
	}
	if w.Updating != "" || !slices.Equal(w.History, []string{"0", "b", "a", "step-2"}) {
		t.Fatalf("after the update: %+v", w)
	}
}
