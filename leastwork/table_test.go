package leastwork

import (
	"math"
	"reflect"
	"testing"

	"github.com/diffrouter/diffusion-router/wire"
)

// TestAddDoneNeverDrifts: whatever order requests end in, and whether they
// were served or not, the work returns to zero.
func TestAddDoneNeverDrifts(t *testing.T) {
	var tab Table
	costs := []int64{50, 4050, 1, 12, 50}
	for _, c := range costs {
		tab.Add("w:1", c)
	}
	for i := len(costs) - 1; i >= 0; i-- {
		tab.Done("w:1", costs[i], 0, int64(i+1)*1000, i%2 == 0)
	}
	h := tab.Find("w:1")
	if h.Work != 0 || h.Requests != 0 {
		t.Fatalf("after all done: work %d, requests %d", h.Work, h.Requests)
	}
}

// TestMoveNeverDrifts: a request moved to the worker a retry reached
// leaves the first worker at once and the second when it ends; moving
// teaches nothing and is not a pick.
func TestMoveNeverDrifts(t *testing.T) {
	var tab Table
	tab.Add("w:1", 40)
	tab.Add("w:1", 7)
	tab.Move("w:1", "w:2", 40)
	tab.Move("w:2", "w:2", 40) // no-op
	for addr, want := range map[string][2]int64{"w:1": {7, 1}, "w:2": {40, 1}} {
		if h := tab.Find(addr); h == nil || h.Work != want[0] || h.Requests != want[1] || h.Samples != 0 {
			t.Fatalf("%s after the move: %+v, want work %d over %d request(s), no samples", addr, h, want[0], want[1])
		}
	}
	if tab.Picks != 2 {
		t.Fatalf("picks = %d after two adds and a move, want 2", tab.Picks)
	}
	tab.Done("w:1", 7, 0, 1000, true)
	tab.Done("w:2", 40, 0, 2000, true)
	for _, addr := range []string{"w:1", "w:2"} {
		if h := tab.Find(addr); h.Work != 0 || h.Requests != 0 {
			t.Fatalf("%s after all done: work %d, requests %d", addr, h.Work, h.Requests)
		}
	}
}

// TestSpeedLearning: service time is measured from the later of the send
// and the worker's previous answer (it serves one at a time), and a worker
// that turns slower is seen within a few requests.
func TestSpeedLearning(t *testing.T) {
	var tab Table
	// Three requests of cost 10 sent together at t=0 to a worker taking
	// 100 ms each: answers at 100, 200, 300 ms. Each took 100 ms of service.
	for i := range 3 {
		tab.Add("w:1", 10)
		_ = i
	}
	for i := int64(1); i <= 3; i++ {
		if ms := tab.Done("w:1", 10, 0, i*100_000, true); math.Abs(ms-100) > 1e-9 {
			t.Fatalf("request %d: service %v ms, want 100", i, ms)
		}
	}
	if got := tab.Find("w:1").MsPerCost; math.Abs(got-10) > 1e-9 {
		t.Fatalf("ms per cost = %v, want 10", got)
	}
	// Now it takes 200 ms per request.
	now := int64(300_000)
	var after []float64
	for range 5 {
		tab.Add("w:1", 10)
		now += 200_000
		tab.Done("w:1", 10, now-200_000, now, true)
		after = append(after, tab.Find("w:1").MsPerCost)
	}
	if after[2] < 15 || after[4] < 17 {
		t.Fatalf("estimates after a 2x slowdown: %v; want >= 15 after 3 and >= 17 after 5", after)
	}
	// One stall of 100x moves the estimate at most by the clip.
	before := tab.Find("w:1").MsPerCost
	tab.Add("w:1", 10)
	tab.Done("w:1", 10, now, now+100*200_000, true)
	if got := tab.Find("w:1").MsPerCost; got > before*math.Pow(speedClip, speedAlpha)+1e-9 {
		t.Fatalf("one stall moved the estimate from %v to %v", before, got)
	}
	// A failed request teaches nothing.
	before = tab.Find("w:1").MsPerCost
	tab.Add("w:1", 10)
	tab.Done("w:1", 10, 0, now+1e9, false)
	if got := tab.Find("w:1").MsPerCost; got != before {
		t.Fatalf("a failed request changed the estimate: %v -> %v", before, got)
	}
}

func TestTaskCost(t *testing.T) {
	var tab Table
	if got := tab.CostOf("image-edit", 50); got != 50 {
		t.Fatalf("before any sample: %d", got)
	}
	tab.LearnCost("image-edit", 100)
	tab.LearnCost("image-edit", 200)
	if got := tab.CostOf("image-edit", 50); got != 110 {
		t.Fatalf("after 100, 200: %d, want 110", got)
	}
	if got := tab.CostOf("video", 4050); got != 4050 {
		t.Fatalf("other task: %d", got)
	}
}

func TestForget(t *testing.T) {
	tab := Table{Hosts: []Host{{Addr: "gone:1"}, {Addr: "busy:1", Work: 5, Requests: 1}, {Addr: "listed:1"}}}
	tab.Forget(func(a string) bool { return a == "listed:1" })
	var got []string
	for _, h := range tab.Hosts {
		got = append(got, h.Addr)
	}
	if !reflect.DeepEqual(got, []string{"busy:1", "listed:1"}) {
		t.Fatalf("kept %v", got)
	}
}

// TestBaseFit: a fixed part per request (3 ms here, beside 1 ms per unit
// of cost) is learned from requests of different costs, and then counts
// once per queued request.
func TestBaseFit(t *testing.T) {
	var tab Table
	now := int64(0)
	for i := range 40 {
		cost := int64(1)
		if i%3 == 0 {
			cost = 50
		}
		tab.Add("w:1", cost)
		took := (3 + cost) * 1000 // µs
		tab.Done("w:1", cost, now, now+took, true)
		now += took
	}
	h := tab.Find("w:1")
	if math.Abs(tab.Fit.Base-3) > 0.05 || math.Abs(h.MsPerCost-1) > 0.02 {
		t.Fatalf("base %v, ms per cost %v; want 3 and 1", tab.Fit.Base, h.MsPerCost)
	}
	// Worker a holds 15 one-unit requests, b one 50-unit request. With the
	// base, a's queue is 15 x 4 = 60 ms and b's 53 ms: b finishes a new
	// small request first; by cost alone a would look far less loaded.
	v := &wire.PickView{Workers: []wire.PickWorker{{Addr: "a:1"}, {Addr: "b:1"}}}
	q := Table{Global: Global{Fit: Fit{Base: 3, N: 10}}, Hosts: []Host{
		{Addr: "a:1", Work: 15, Requests: 15, MsPerCost: 1, Samples: 9},
		{Addr: "b:1", Work: 50, Requests: 1, MsPerCost: 1, Samples: 9}}}
	if c, _ := Choose(v, []int{0, 1}, &q, 1, 0, 0); c.First != "b:1" {
		t.Fatalf("picked %s, want b:1", c.First)
	}
	// The global record keeps the fit.
	var again Global
	if err := DecodeGlobal(AppendGlobal(nil, tab.Global), &again); err != nil || again.Fit != tab.Fit || again.Picks != tab.Picks {
		t.Fatalf("fit lost in encoding: %+v vs %+v (%v)", again, tab.Global, err)
	}
}

// TestTeach: a worker's own GPU time (a video job's inference_time_s)
// teaches its speed as it is: no queue, no base fit.
func TestTeach(t *testing.T) {
	var tab Table
	tab.Teach("v:1", 100, 1000) // 10 ms per unit
	h := tab.Find("v:1")
	if h == nil || h.Samples != 1 || math.Abs(h.MsPerCost-10) > 1e-9 {
		t.Fatalf("after one sample: %+v, want 10 ms per unit", h)
	}
	if tab.Fit.N != 0 || h.Work != 0 || h.Requests != 0 || h.LastDone != 0 {
		t.Fatalf("teaching touched the fit or the queue: %+v, fit %+v", h, tab.Fit)
	}
	// The worker turns 2x slower: noticed within three jobs.
	for range 3 {
		tab.Teach("v:1", 100, 2000)
	}
	if got := tab.Find("v:1").MsPerCost; got < 15 {
		t.Fatalf("after three 2x-slower jobs: %v ms per unit, want 15 or more", got)
	}
	for _, bad := range []struct {
		cost int64
		ms   float64
	}{{0, 10}, {10, 0}, {10, -1}, {10, math.NaN()}, {10, math.Inf(1)}} {
		before := *tab.Find("v:1")
		tab.Teach("v:1", bad.cost, bad.ms)
		if *tab.Find("v:1") != before {
			t.Errorf("cost %d, %v ms taught something", bad.cost, bad.ms)
		}
	}
}

// TestLearnCostResistsOutliers: one absurd sample moves a task's average
// by at most 30 %, while a real change of workload is followed.
func TestLearnCostResistsOutliers(t *testing.T) {
	for _, tc := range []struct {
		name     string
		samples  []float64
		min, max int64
	}{
		{"one outlier after steady", append(repeat(20, 40), 1.05e11), 20, 26},
		{"outlier then steady again", append(append(repeat(20, 40), 1e11), repeat(20, 43)...), 20, 20},
		{"workload grows 16x", append(repeat(20, 20), repeat(320, 30)...), 300, 320},
		{"NaN, Inf and zero ignored", []float64{20, math.NaN(), math.Inf(1), 0, -5}, 20, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tab Table
			for _, s := range tc.samples {
				tab.LearnCost("video", s)
			}
			if got := tab.CostOf("video", 1); got < tc.min || got > tc.max {
				t.Fatalf("average %d, want %d..%d", got, tc.min, tc.max)
			}
		})
	}
}

func repeat(v float64, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = v
	}
	return out
}
