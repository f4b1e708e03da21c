package leastwork

import (
	"math"
	"slices"
	"testing"

	"github.com/diffrouter/diffusion-router/wire"
)

func TestEligible(t *testing.T) {
	v := &wire.PickView{Workers: []wire.PickWorker{
		{Addr: "img-a:1", Image: true, Models: []string{"flux"}},
		{Addr: "img-b:1", Image: true, Models: []string{"sdxl"}},
		{Addr: "vid:1", Video: true, Models: []string{"wan"}},
	}}
	imageless := &wire.PickView{Workers: []wire.PickWorker{{Addr: "vid:1", Video: true}, {Addr: "vid:2", Video: true}}}
	tests := []struct {
		name  string
		view  *wire.PickView
		pool  Pool
		model string
		want  []int
	}{
		{"image, no model", v, PoolImage, "", []int{0, 1}},
		{"image, listed model", v, PoolImage, "sdxl", []int{1}},
		{"image, model nobody lists: fallback to the pool", v, PoolImage, "nope", []int{0, 1}},
		{"image, model only a video worker lists", v, PoolImage, "wan", []int{0, 1}},
		{"image with no image workers: any", imageless, PoolImage, "", []int{0, 1}},
		{"video", v, PoolVideo, "", []int{2}},
		{"video, model", v, PoolVideo, "wan", []int{2}},
		{"video without video workers", &wire.PickView{Workers: v.Workers[:2]}, PoolVideo, "", []int{}},
		{"any, model", v, PoolAny, "flux", []int{0}},
		{"any", v, PoolAny, "", []int{0, 1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Eligible(nil, tt.view, tt.pool, tt.model); !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestChoose(t *testing.T) {
	view := func(ws ...wire.PickWorker) *wire.PickView { return &wire.PickView{Workers: ws} }
	all := func(v *wire.PickView) []int { return Eligible(nil, v, PoolAny, "") }
	tests := []struct {
		name          string
		view          *wire.PickView
		table         Table
		cost          int64
		rot           int
		first, second string
	}{
		{
			name:  "idle equal workers: the rotation decides",
			view:  view(wire.PickWorker{Addr: "a:1"}, wire.PickWorker{Addr: "b:1"}, wire.PickWorker{Addr: "c:1"}),
			cost:  10,
			rot:   1,
			first: "b:1", second: "c:1",
		},
		{
			name: "least outstanding work, not fewest requests",
			view: view(wire.PickWorker{Addr: "a:1"}, wire.PickWorker{Addr: "b:1"}),
			// a holds one video (4050), b two thumbnails (2 x 5).
			table: Table{Hosts: []Host{{Addr: "a:1", Work: 4050, Requests: 1}, {Addr: "b:1", Work: 10, Requests: 2}}},
			cost:  50,
			first: "b:1", second: "a:1",
		},
		{
			name: "a slow worker with less work loses to a fast one with more",
			view: view(wire.PickWorker{Addr: "fast:1"}, wire.PickWorker{Addr: "slow:1"}),
			table: Table{Hosts: []Host{
				{Addr: "fast:1", Work: 100, Requests: 2, MsPerCost: 1, Samples: 5},
				{Addr: "slow:1", Work: 50, Requests: 1, MsPerCost: 4, Samples: 5}}},
			cost:  50,
			first: "fast:1", second: "slow:1",
		},
		{
			name: "other Envoys' work counts",
			view: view(wire.PickWorker{Addr: "a:1", RemoteWork: 500}, wire.PickWorker{Addr: "b:1"}),
			table: Table{Hosts: []Host{
				{Addr: "a:1", Work: 0}, {Addr: "b:1", Work: 100, Requests: 2}}},
			cost:  50,
			first: "b:1", second: "a:1",
		},
		{
			name: "a new worker is taken at the median speed",
			view: view(wire.PickWorker{Addr: "new:1"}, wire.PickWorker{Addr: "a:1"}, wire.PickWorker{Addr: "b:1"}),
			table: Table{Hosts: []Host{
				{Addr: "a:1", Work: 100, MsPerCost: 1, Samples: 5},
				{Addr: "b:1", Work: 100, MsPerCost: 3, Samples: 5}}},
			// new: (0+50) x 2 = 100; a: 150 x 1 = 150; b: 450.
			cost:  50,
			first: "new:1", second: "a:1",
		},
		{
			name: "the fleet's speed when this Envoy has none",
			view: view(wire.PickWorker{Addr: "a:1", MsPerCost: 10}, wire.PickWorker{Addr: "b:1", MsPerCost: 1}),
			cost: 50,
			rot:  0,
			// Both idle: b is 10x faster.
			first: "b:1", second: "a:1",
		},
		{
			name:  "one candidate: no second choice",
			view:  view(wire.PickWorker{Addr: "a:1"}),
			cost:  1,
			first: "a:1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, ok := Choose(tt.view, all(tt.view), &tt.table, tt.cost, tt.rot, 0)
			if !ok || c.First != tt.first || c.Second != tt.second {
				t.Fatalf("got %+v (%v), want first %s second %s", c, ok, tt.first, tt.second)
			}
		})
	}
	if _, ok := Choose(view(), nil, &Table{}, 1, 0, 0); ok {
		t.Fatal("chose among no candidates")
	}
}

// TestStaleSlowEstimate: a worker whose slow estimate is many picks old
// counts as typical again, so it gets work and is measured afresh; its
// next sample moves the estimate fast.
func TestStaleSlowEstimate(t *testing.T) {
	v := &wire.PickView{Workers: []wire.PickWorker{{Addr: "a:1"}, {Addr: "b:1"}}}
	tab := Table{Global: Global{Picks: 10}, Hosts: []Host{
		{Addr: "a:1", MsPerCost: 1, Samples: 9, SampledAt: 10},
		{Addr: "b:1", MsPerCost: 5, Samples: 9, SampledAt: 5}}}
	if c, _ := Choose(v, []int{0, 1}, &tab, 10, 1, 0); c.First != "a:1" {
		t.Fatalf("fresh estimates: picked %s, want the fast a:1", c.First)
	}
	tab.Picks = 5 + staleAfter + 1
	tab.Hosts[0].SampledAt = tab.Picks
	if c, _ := Choose(v, []int{0, 1}, &tab, 10, 1, 0); c.First != "b:1" {
		t.Fatalf("stale slow estimate: picked %s, want b:1 (a tie, rotation 1)", c.First)
	}
	tab.Add("b:1", 10)
	tab.Done("b:1", 10, 0, 10_000, true) // 1 ms per unit
	if got := tab.Find("b:1").MsPerCost; got > 5*math.Pow(1.0/4, speedAlphaFast)+1e-9 {
		t.Fatalf("a fresh sample after a stale stretch moved the estimate only to %v", got)
	}
}

// TestFailingWorkerHeldBack: a worker is held back from picks for a few
// seconds from the failure at which Envoy's outlier detection would eject
// it (N 5xx in a row, or two gateway failures in a row), not before; an
// answer below 500 ends a run; with every candidate failing there is no
// pick (Envoy's own policy routes).
func TestFailingWorkerHeldBack(t *testing.T) {
	v := &wire.PickView{Workers: []wire.PickWorker{{Addr: "a:1"}, {Addr: "b:1"}}, Ejection: wire.EjectionAfter(5)}
	now := int64(1_000_000_000)
	type answer struct {
		fail, gateway, ok bool
	}
	f, g, ok := answer{fail: true}, answer{fail: true, gateway: true}, answer{ok: true}
	cases := []struct {
		name string
		rule wire.Ejection
		run  []answer
		held bool
	}{
		{"four 500s of five", wire.EjectionAfter(5), []answer{f, f, f, f}, false},
		{"five 500s", wire.EjectionAfter(5), []answer{f, f, f, f, f}, true},
		{"one reset", wire.EjectionAfter(5), []answer{g}, false},
		{"two resets", wire.EjectionAfter(5), []answer{g, g}, true},
		{"a 500 between resets", wire.EjectionAfter(5), []answer{g, f, g}, false},
		{"a 4xx ends the run", wire.EjectionAfter(5), []answer{f, f, f, f, ok, f}, false},
		{"one of one", wire.EjectionAfter(1), []answer{f}, true},
		{"no rule: two", wire.Ejection{}, []answer{f, f}, true},
	}
	for _, c := range cases {
		var tab Table
		for _, a := range c.run {
			if a.ok {
				tab.Answered("a:1")
			} else {
				tab.Fail("a:1", now, a.gateway)
			}
		}
		v.Ejection = c.rule
		choice, _ := Choose(v, []int{0, 1}, &tab, 1, 0, now+1000)
		if held := choice.First == "b:1" && choice.Second == ""; held != c.held {
			t.Errorf("%s: picked %+v, held back = %v, want %v", c.name, choice, held, c.held)
		}
		if c.held {
			if c2, _ := Choose(v, []int{0, 1}, &tab, 1, 0, now+failHold.Microseconds()); c2.First != "a:1" {
				t.Errorf("%s: after the hold picked %s, want a:1 back", c.name, c2.First)
			}
		}
	}
	var tab Table
	v.Ejection = wire.Ejection{}
	for _, a := range []string{"a:1", "a:1", "b:1", "b:1"} {
		tab.Fail(a, now, true)
	}
	if _, ok := Choose(v, []int{0, 1}, &tab, 1, 0, now+1000); ok {
		t.Fatal("picked with every candidate failing")
	}
	tab.Add("a:1", 1)
	tab.Done("a:1", 1, now, now+5000, true)
	if h := tab.Find("a:1"); h.Failures != 0 || h.GatewayFailures != 0 {
		t.Fatalf("a success left %d failures (%d gateway)", h.Failures, h.GatewayFailures)
	}
}

// TestSample: a small candidate list is weighed whole; a large one by
// SampleSize distinct candidates, and over many picks every candidate
// gets weighed.
func TestSample(t *testing.T) {
	var rnd uint64
	small := []int{3, 1, 2}
	if got := Sample(nil, small, &rnd); !slices.Equal(got, small) {
		t.Fatalf("small list sampled as %v", got)
	}
	large := make([]int, 300)
	for i := range large {
		large[i] = i
	}
	seen := map[int]int{}
	var dst []int
	for range 1000 {
		dst = Sample(dst, large, &rnd)
		if len(dst) != SampleSize {
			t.Fatalf("sample of %d, want %d", len(dst), SampleSize)
		}
		for k, c := range dst {
			if slices.Contains(dst[:k], c) {
				t.Fatalf("candidate %d drawn twice in %v", c, dst)
			}
			seen[c]++
		}
	}
	if len(seen) != len(large) {
		t.Fatalf("%d of %d candidates ever weighed", len(seen), len(large))
	}
}

// TestOverdueWorkerHeldBack: a worker with a request seen far overdue gets
// no picks while the sightings go on, and is back once they stop.
func TestOverdueWorkerHeldBack(t *testing.T) {
	v := &wire.PickView{Workers: []wire.PickWorker{{Addr: "a:1", Image: true}, {Addr: "b:1", Image: true}}}
	var tab Table
	tab.Add("b:1", 50) // b is busier: a would be picked
	now := int64(1_000_000_000)
	if c, _ := Choose(v, []int{0, 1}, &tab, 1, 0, now); c.First != "a:1" {
		t.Fatalf("before: picked %s, want a:1", c.First)
	}
	tab.host("a:1").OverdueAt = now
	if c, _ := Choose(v, []int{0, 1}, &tab, 1, 0, now+1000); c.First != "b:1" || c.Second != "" {
		t.Fatalf("overdue a: picked %+v, want b:1 alone", c)
	}
	if c, _ := Choose(v, []int{0, 1}, &tab, 1, 0, now+overdueHold.Microseconds()); c.First != "a:1" {
		t.Fatalf("after the sightings stopped: picked %s, want a:1 back", c.First)
	}
}
