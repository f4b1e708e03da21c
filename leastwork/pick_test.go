package leastwork

import (
	"math"
	"reflect"
	"slices"
	"testing"
	"unsafe"

	"github.com/diffrouter/diffusion-router/wire"
)

func TestRecordsRoundTrip(t *testing.T) {
	for _, h := range []Host{
		{Addr: "127.0.0.1:8001", Work: 150, Requests: 3, MsPerCost: 0.25, Samples: 9, LastDone: 1_700_000_000_000_000,
			Streak: -2, SampledAt: 40, Failures: 1, GatewayFailures: 1, FailedAt: 77},
		{Addr: "[::1]:9", Work: -1},
	} {
		got, err := DecodeHost(AppendHost(nil, h), h.Addr)
		if err != nil || got != h {
			t.Fatalf("host round trip:\n got %+v (%v)\nwant %+v", got, err, h)
		}
	}
	if h, err := DecodeHost(nil, "a:1"); err != nil || h != (Host{Addr: "a:1"}) {
		t.Fatalf("empty host record = %+v, %v", h, err)
	}
	g := Global{Tasks: []TaskCost{{Task: "image", Avg: 47.5, Samples: 12}, {Task: "video", Avg: 900, Samples: 1}}, Picks: 99,
		Fit: Fit{Base: 3, N: 10, C: 1, T: 2, CC: 3, CT: 4}}
	var got Global
	if err := DecodeGlobal(AppendGlobal(nil, g), &got); err != nil || !reflect.DeepEqual(got, g) {
		t.Fatalf("global round trip:\n got %+v (%v)\nwant %+v", got, err, g)
	}
	// A second decode into the same Global reuses its task names.
	before := unsafe.StringData(got.Tasks[0].Task)
	if err := DecodeGlobal(AppendGlobal(nil, g), &got); err != nil || unsafe.StringData(got.Tasks[0].Task) != before {
		t.Fatalf("task name not reused (%v)", err)
	}
	names := []string{"10.0.0.1:80", "[::1]:9"}
	if back, err := DecodeNames(AppendNames(nil, names)); err != nil || !slices.Equal(back, names) {
		t.Fatalf("names round trip = %v, %v", back, err)
	}
}

func TestRecordsRefuseDamage(t *testing.T) {
	host := AppendHost(nil, Host{Work: 5, Requests: 1})
	global := AppendGlobal(nil, Global{Tasks: []TaskCost{{Task: "x", Avg: 1}}})
	names := AppendNames(nil, []string{"a:1"})
	for name, b := range map[string][]byte{
		"other format": append([]byte{recordFormat + 1}, host[1:]...),
		"truncated":    host[:len(host)-3],
		"trailing":     append(slices.Clone(host), 0),
	} {
		if _, err := DecodeHost(b, "a:1"); err == nil {
			t.Errorf("host %s: decoded", name)
		}
	}
	for name, b := range map[string][]byte{
		"other format": append([]byte{recordFormat + 1}, global[1:]...),
		"truncated":    global[:len(global)-3],
		"trailing":     append(slices.Clone(global), 0),
		"huge count":   {recordFormat, 0xff, 0xff, 0xff, 0xff, 0x0f},
	} {
		var g Global
		if err := DecodeGlobal(b, &g); err == nil {
			t.Errorf("global %s: decoded", name)
		}
	}
	for name, b := range map[string][]byte{
		"truncated":  names[:len(names)-1],
		"trailing":   append(slices.Clone(names), 0),
		"huge count": {recordFormat, 0xff, 0xff, 0xff, 0xff, 0x0f},
	} {
		if _, err := DecodeNames(b); err == nil {
			t.Errorf("names %s: decoded", name)
		}
	}
}

func FuzzDecodeRecords(f *testing.F) {
	f.Add(AppendHost(nil, Host{Work: 5}))
	f.Add(AppendGlobal(nil, Global{Tasks: []TaskCost{{Task: "x", Avg: 1}}}))
	f.Add(AppendNames(nil, []string{"a:1"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if h, err := DecodeHost(b, "a:1"); err == nil {
			if again, err := DecodeHost(AppendHost(nil, h), "a:1"); err != nil || again != h {
				t.Fatalf("re-encoded host changed: %+v vs %+v (%v)", again, h, err)
			}
		}
		var g Global
		if err := DecodeGlobal(b, &g); err == nil {
			var again Global
			if err := DecodeGlobal(AppendGlobal(nil, g), &again); err != nil || len(again.Tasks) != len(g.Tasks) {
				t.Fatalf("re-encoded global changed (%v)", err)
			}
		}
		if n, err := DecodeNames(b); err == nil {
			if again, err := DecodeNames(AppendNames(nil, n)); err != nil || !slices.Equal(again, n) {
				t.Fatalf("re-encoded names changed (%v)", err)
			}
		}
	})
}

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

func TestCompletionLog(t *testing.T) {
	var log []byte
	want := []wire.Completion{{Addr: "10.0.0.1:80", Cost: 50, Sent: 1, Done: 9}, {Addr: "[::1]:81", Cost: 1, Sent: 10, Done: 12, GPU: true}}
	for _, c := range want {
		log = AppendCompletion(log, c)
	}
	got, err := DecodeCompletions(log)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, %v", got, err)
	}
	// Full: further completions are dropped, the log stays bounded.
	for len(log) < MaxLogBytes {
		log = AppendCompletion(log, want[0])
	}
	if n := len(AppendCompletion(log, want[0])); n != len(log) {
		t.Fatalf("a full log grew to %d bytes", n)
	}
	all, err := DecodeCompletions(log)
	if err != nil || len(all) != MaxCompletions {
		t.Fatalf("a full log decodes to %d completions (%v), want the latest %d", len(all), err, MaxCompletions)
	}
	if _, err := DecodeCompletions(log[:len(log)-1]); err == nil {
		t.Fatal("a cut log decoded")
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
