package loadboard

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/wire"
	"github.com/diffrouter/diffusion-router/workerword"
)

// clock is a settable clock for the board.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func worker(host string, port uint32, state registry.State, tasks ...string) registry.Worker {
	return registry.Worker{URL: registry.WorkerURL{Scheme: "http", Host: host, Port: port}, Address: host, State: state,
		Caps: registry.Capabilities{Known: true, TaskTypes: tasks, ModelIDs: []string{"m-" + host}}}
}

func TestCheck(t *testing.T) {
	ok := wire.LoadReport{Node: "n", Hosts: []wire.HostReport{{Addr: "127.0.0.1:1", Work: 5, Requests: 1, MsPerCost: 0.5, Samples: 2}}}
	if err := Check(ok); err != nil {
		t.Fatalf("valid report refused: %v", err)
	}
	bad := map[string]func(*wire.LoadReport){
		"no node":       func(r *wire.LoadReport) { r.Node = "" },
		"long node":     func(r *wire.LoadReport) { r.Node = strings.Repeat("n", 300) },
		"empty addr":    func(r *wire.LoadReport) { r.Hosts[0].Addr = "" },
		"negative work": func(r *wire.LoadReport) { r.Hosts[0].Work = -1 },
		"NaN speed":     func(r *wire.LoadReport) { r.Hosts[0].MsPerCost = math.NaN() },
		"inf speed":     func(r *wire.LoadReport) { r.Hosts[0].MsPerCost = math.Inf(1) },
		"empty freed":   func(r *wire.LoadReport) { r.Freed = []string{""} },
		"long freed":    func(r *wire.LoadReport) { r.Freed = []string{strings.Repeat("a", 301)} },
		"too many freed": func(r *wire.LoadReport) {
			r.Freed = make([]string, MaxHostsPerNode+1)
			for i := range r.Freed {
				r.Freed[i] = "a:1"
			}
		},
		"too many hosts": func(r *wire.LoadReport) {
			r.Hosts = make([]wire.HostReport, MaxHostsPerNode+1)
			for i := range r.Hosts {
				r.Hosts[i].Addr = "a:1"
			}
		},
	}
	for name, mutate := range bad {
		r := ok
		r.Hosts = append([]wire.HostReport(nil), ok.Hosts...)
		mutate(&r)
		if err := Check(r); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestLateReport: a node's report that arrives after a newer one (its
// threads report concurrently) adds its completions and freed slots, but
// its older load does not replace the newer.
func TestLateReport(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	b := New(Options{Now: func() time.Time { return now }})
	snap := registry.Snapshot{Generation: 1, Workers: []registry.Worker{worker("10.0.0.1", 80, registry.StateActive, "T2I")}}
	none := func(string) bool { return false }
	a := "10.0.0.1:80"
	ms := now.UnixMilli()
	if _, err := b.SyncSigned(wire.LoadReport{Node: "A", Hosts: []wire.HostReport{{Addr: a, Work: 10, Requests: 1}}}, ms, snap, none); err != nil {
		t.Fatal(err)
	}
	if _, err := b.SyncSigned(wire.LoadReport{Node: "A", Hosts: []wire.HostReport{{Addr: a, Work: 50, Requests: 5}}, Freed: []string{a}}, ms-1, snap, none); err != nil {
		t.Fatalf("late report refused: %v", err)
	}
	if got := b.Freed(a); got != 1 {
		t.Fatalf("the late report's freed slot: %d, want 1", got)
	}
	v := b.FleetView(snap, none)
	if w := v.Workers[0]; w.RemoteWork != 10 || w.RemoteRequests != 1 {
		t.Fatalf("load after a late report: %d work, %d requests; want the newer 10, 1", w.RemoteWork, w.RemoteRequests)
	}
	if _, err := b.SyncSigned(wire.LoadReport{Node: "A", Freed: []string{a}}, ms-1, snap, none); !errors.Is(err, ErrClaimRefused) || b.Freed(a) != 1 {
		t.Fatalf("a copy of the late report: %v, freed %d", err, b.Freed(a))
	}
}

// TestFreedCounted: the ends reports name add up per worker, for the
// queue to read as they happen.
func TestFreedCounted(t *testing.T) {
	b := New(Options{})
	snap := registry.Snapshot{Generation: 1, Workers: []registry.Worker{worker("10.0.0.1", 80, registry.StateActive, "T2I")}}
	none := func(string) bool { return false }
	for _, r := range []wire.LoadReport{
		{Node: "A", Freed: []string{"10.0.0.1:80"}},
		{Node: "B", Freed: []string{"10.0.0.1:80", "10.0.0.1:80"}},
		{Node: "A"},
	} {
		if _, err := b.Sync(r, snap, none); err != nil {
			t.Fatal(err)
		}
	}
	if got := b.Freed("10.0.0.1:80"); got != 3 {
		t.Fatalf("freed %d, want 3", got)
	}
	if got := b.Freed("10.0.0.2:80"); got != 0 {
		t.Fatalf("a worker nobody reported: freed %d", got)
	}
	// A refused report counts nothing.
	if _, err := b.Sync(wire.LoadReport{Node: "A", Freed: []string{""}}, snap, none); err == nil || b.Freed("10.0.0.1:80") != 3 {
		t.Fatalf("bad report: %v, freed %d", err, b.Freed("10.0.0.1:80"))
	}
}

func TestSyncView(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	b := New(Options{Now: c.now, Ejection: wire.EjectionAfter(5)})
	snap := registry.Snapshot{Generation: 7, Workers: []registry.Worker{
		worker("10.0.0.1", 80, registry.StateActive, "T2I"),
		worker("10.0.0.2", 80, registry.StateActive, "T2V"),
		worker("10.0.0.3", 80, registry.StateDraining, "T2I"),
		worker("10.0.0.4", 80, registry.StateQuarantined, "T2I"),
		worker("10.0.0.5", 80, registry.StateActive, "T2I"), // ejected, per out()
		worker("::1", 81, registry.StateActive, "T2I"),
	}}
	asleep := worker("10.0.0.6", 80, registry.StateActive, "T2I")
	asleep.Asleep = true
	snap.Workers = append(snap.Workers, asleep)
	out := func(key string) bool { return key == "http://10.0.0.5:80" }

	// Envoy B reports work on worker 1; A then sees it as remote, and B
	// does not see its own.
	if _, err := b.Sync(wire.LoadReport{Node: "B", Generation: 7, Hosts: []wire.HostReport{
		{Addr: "10.0.0.1:80", Work: 300, Requests: 2, MsPerCost: 2, Samples: 4}}}, snap, out); err != nil {
		t.Fatal(err)
	}
	va, err := b.Sync(wire.LoadReport{Node: "A", Generation: 7, Hosts: []wire.HostReport{
		{Addr: "10.0.0.1:80", Work: 50, Requests: 1, MsPerCost: 4, Samples: 4}}}, snap, out)
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, w := range va.Workers {
		addrs = append(addrs, w.Addr)
	}
	if got, want := strings.Join(addrs, " "), "10.0.0.1:80 10.0.0.2:80 [::1]:81"; got != want {
		t.Fatalf("eligible = %s, want %s", got, want)
	}
	if va.Generation != 7 || va.Workers[0].RemoteWork != 300 || !va.Workers[0].Image || va.Workers[0].Video || !va.Workers[1].Video {
		t.Fatalf("view for A = %+v", va)
	}
	if va.Envoys != 2 {
		t.Fatalf("view counts %d Envoys, want 2", va.Envoys)
	}
	if va.Ejection != (wire.Ejection{Consecutive5xx: 5, ConsecutiveGateway: 2}) {
		t.Fatalf("view passes ejection rule %+v, want 5 and 2", va.Ejection)
	}
	vb, _ := b.Sync(wire.LoadReport{Node: "B", Generation: 7, Hosts: []wire.HostReport{{Addr: "10.0.0.1:80", Work: 300, Requests: 2}}}, snap, out)
	if vb.Workers[0].RemoteWork != 50 {
		t.Fatalf("B sees remote %d on worker 1, want A's 50", vb.Workers[0].RemoteWork)
	}
	if h := b.Hosts()["10.0.0.1:80"]; h.Work != 350 || h.Requests != 3 || h.Envoys != 2 {
		t.Fatalf("hosts = %+v", h)
	}

	// A goes silent: after the liveness window its work stops counting.
	c.t = c.t.Add(aliveFor + time.Millisecond)
	vb, _ = b.Sync(wire.LoadReport{Node: "B", Generation: 7}, snap, out)
	if vb.Workers[0].RemoteWork != 0 || b.Nodes() != 1 {
		t.Fatalf("silent Envoy still counted: remote %d, nodes %d", vb.Workers[0].RemoteWork, b.Nodes())
	}
}

func TestSyncRefusesBadReportsAndTooManyNodes(t *testing.T) {
	b := New(Options{})
	none := func(string) bool { return false }
	if _, err := b.Sync(wire.LoadReport{}, registry.Snapshot{}, none); err == nil {
		t.Fatal("empty node accepted")
	}
	if b.Nodes() != 0 {
		t.Fatal("a refused report was recorded")
	}
	for i := range MaxNodes {
		if _, err := b.Sync(wire.LoadReport{Node: "n" + string(rune('A'+i))}, registry.Snapshot{}, none); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Sync(wire.LoadReport{Node: "one too many"}, registry.Snapshot{}, none); err == nil {
		t.Fatal("node beyond the limit accepted")
	}
	if _, err := b.Sync(wire.LoadReport{Node: "nA"}, registry.Snapshot{}, none); err != nil {
		t.Fatalf("a known node refused at the limit: %v", err)
	}
}

// TestSeen: a drain of generation g waits for every live picking Envoy to
// report g, or to fall silent for the liveness window.
func TestSeen(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	b := New(Options{Now: c.now})
	if !b.Seen(5) {
		t.Fatal("no Envoy picks, yet Seen is false")
	}
	none := func(string) bool { return false }
	b.Sync(wire.LoadReport{Node: "A", Generation: 5}, registry.Snapshot{}, none)
	b.Sync(wire.LoadReport{Node: "B", Generation: 4}, registry.Snapshot{}, none)
	if b.Seen(5) {
		t.Fatal("B picks with generation 4, yet Seen(5)")
	}
	b.Sync(wire.LoadReport{Node: "B", Generation: 5}, registry.Snapshot{}, none)
	if !b.Seen(5) {
		t.Fatal("both report 5, yet not Seen(5)")
	}
	if b.Seen(6) {
		t.Fatal("Seen(6) before any reports it")
	}
	c.t = c.t.Add(aliveFor + time.Millisecond)
	if !b.Seen(6) {
		t.Fatal("silent Envoys still hold Seen back")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b.Sync(wire.LoadReport{Node: "A", Generation: 1}, registry.Snapshot{}, none)
	if err := b.WaitSeen(ctx, 2); err == nil {
		t.Fatal("WaitSeen returned nil with the context done and generation unseen")
	}
}

// TestFleetSpeedFromMergedCompletions: a worker serves one request at a
// time; two Envoys' requests interleave on it. Each Envoy alone would take
// the other's request for its own service time; merged in answer order,
// the board sees the true 100 ms per request.
func TestFleetSpeedFromMergedCompletions(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	b := New(Options{Now: c.now})
	snap := registry.Snapshot{Generation: 1, Workers: []registry.Worker{worker("10.0.0.1", 80, registry.StateActive, "T2I")}}
	// A completion an hour ahead of the board's clock is ignored: it
	// would let everything after it in out of order.
	if _, err := b.Sync(wire.LoadReport{Node: "X", Completions: []wire.Completion{
		{Addr: "10.0.0.1:80", Cost: 1, Sent: 1000e6 + 3600e6, Done: 1000e6 + 3600e6 + 1}}}, snap, func(string) bool { return false }); err != nil {
		t.Fatal(err)
	}
	none := func(string) bool { return false }
	const ms = 1000 // µs
	a := "10.0.0.1:80"
	// Envoy A's two requests and B's one, all sent at 0, answered at
	// 100, 200 (B's) and 300 ms; each costs 10.
	if _, err := b.Sync(wire.LoadReport{Node: "A", Completions: []wire.Completion{
		{Addr: a, Cost: 10, Sent: 0, Done: 100 * ms}, {Addr: a, Cost: 10, Sent: 0, Done: 300 * ms}}}, snap, none); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Sync(wire.LoadReport{Node: "B", Completions: []wire.Completion{{Addr: a, Cost: 10, Sent: 0, Done: 200 * ms}}}, snap, none); err != nil {
		t.Fatal(err)
	}
	// Nothing is taken before a later completion shows the window passed.
	if v, _ := b.Sync(wire.LoadReport{Node: "B"}, snap, none); v.Workers[0].MsPerCost != 0 {
		t.Fatalf("speed learned before the merge window passed: %v", v.Workers[0].MsPerCost)
	}
	v, _ := b.Sync(wire.LoadReport{Node: "A", Completions: []wire.Completion{{Addr: a, Cost: 10, Sent: 1000 * ms, Done: 1100 * ms}}}, snap, none)
	if got := v.Workers[0].MsPerCost; got < 9.99 || got > 10.01 {
		t.Fatalf("fleet speed = %v ms per unit, want 10", got)
	}
	if h := b.Hosts()[a]; h.MsPerCost != v.Workers[0].MsPerCost {
		t.Fatalf("GET /workers would show %v", h.MsPerCost)
	}
	// A video worker's own GPU time teaches at once, outside the merge.
	vid := worker("10.0.0.2", 80, registry.StateActive, "T2V")
	snap.Workers = append(snap.Workers, vid)
	v, _ = b.Sync(wire.LoadReport{Node: "B", Completions: []wire.Completion{{Addr: "10.0.0.2:80", Cost: 100, Sent: 0, Done: 5000 * ms, GPU: true}}}, snap, none)
	if got := v.Workers[1].MsPerCost; got < 49.99 || got > 50.01 {
		t.Fatalf("video worker's speed = %v ms per unit, want 50", got)
	}
	bad := wire.LoadReport{Node: "A", Completions: []wire.Completion{{Addr: a, Cost: 1, Sent: 5, Done: 4}}}
	if _, err := b.Sync(bad, snap, none); err == nil {
		t.Fatal("a completion answered before it was sent was accepted")
	}
}

// TestViewWaitsForEnvoys: a worker put back after a drain-mode update, or
// given new weights, is listed only once every Envoy runs that generation;
// one leaving rotation is dropped at once.
func TestViewWaitsForEnvoys(t *testing.T) {
	var synced uint64
	b := New(Options{Synced: func() uint64 { return synced }})
	at := func(gen uint64, state registry.State, version string) registry.Snapshot {
		w := worker("10.0.0.1", 80, state, "T2I")
		w.WeightVersion, w.ModelPath = version, "/ckpt/"+version
		other := worker("10.0.0.2", 80, registry.StateActive, "T2I")
		s := registry.Snapshot{Generation: gen, Workers: []registry.Worker{w, other}}
		b.Published(s)
		return s
	}
	listed := func(snap registry.Snapshot) []string {
		t.Helper()
		v, err := b.Sync(wire.LoadReport{Node: "A", Generation: snap.Generation}, snap, func(string) bool { return false })
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, w := range v.Workers {
			out = append(out, w.Addr)
		}
		return out
	}
	both, one := "[10.0.0.1:80 10.0.0.2:80]", "[10.0.0.2:80]"
	steps := []struct {
		name   string
		gen    uint64
		state  registry.State
		ver    string
		synced uint64
		want   string
	}{
		{"nothing applied yet", 1, registry.StateActive, "1", 0, "[]"},
		{"applied", 1, registry.StateActive, "1", 1, both},
		{"updating: out at once", 2, registry.StateUpdating, "1", 1, one},
		{"new weights, still updating", 3, registry.StateUpdating, "2", 1, one},
		{"active again, Envoys behind", 4, registry.StateActive, "2", 2, one},
		{"Envoys run the new weights but not yet active", 4, registry.StateActive, "2", 3, one},
		{"Envoys run it", 4, registry.StateActive, "2", 4, both},
		{"in-place weights, Envoys behind", 5, registry.StateActive, "3", 4, one},
		{"in-place weights applied", 5, registry.StateActive, "3", 5, both},
	}
	for _, s := range steps {
		snap := at(s.gen, s.state, s.ver)
		synced = s.synced
		if got := fmt.Sprint(listed(snap)); got != s.want {
			t.Fatalf("%s: view lists %s, want %s", s.name, got, s.want)
		}
	}
}

// TestEndedJobsRelayed: a video job one Envoy saw end is passed to the
// others (not back to it), with its GPU time, for as long as a report
// stays alive.
func TestEndedJobsRelayed(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	b := New(Options{Now: c.now})
	snap := registry.Snapshot{Generation: 1}
	none := func(string) bool { return false }
	if _, err := b.Sync(wire.LoadReport{Node: "A", Finished: []wire.EndedJob{{ID: "video_1", GPUMs: 2500}}}, snap, none); err != nil {
		t.Fatal(err)
	}
	if v, _ := b.Sync(wire.LoadReport{Node: "A"}, snap, none); len(v.Finished) != 0 {
		t.Fatalf("A gets its own ended jobs back: %v", v.Finished)
	}
	if v, _ := b.Sync(wire.LoadReport{Node: "B"}, snap, none); fmt.Sprint(v.Finished) != "[{video_1 2500}]" {
		t.Fatalf("B gets %v, want [{video_1 2500}]", v.Finished)
	}
	c.t = c.t.Add(aliveFor + time.Millisecond)
	if v, _ := b.Sync(wire.LoadReport{Node: "B"}, snap, none); len(v.Finished) != 0 {
		t.Fatalf("an old ended job is still relayed: %v", v.Finished)
	}
	for name, r := range map[string]wire.LoadReport{
		"empty id":       {Node: "A", Finished: []wire.EndedJob{{}}},
		"long id":        {Node: "A", Finished: []wire.EndedJob{{ID: strings.Repeat("v", wire.MaxJobID+1)}}},
		"too many":       {Node: "A", Finished: make([]wire.EndedJob, leastwork.MaxFinished+1)},
		"negative GPU":   {Node: "A", Finished: []wire.EndedJob{{ID: "video_2", GPUMs: -1}}},
		"NaN GPU":        {Node: "A", Finished: []wire.EndedJob{{ID: "video_2", GPUMs: math.NaN()}}},
		"GPU over a day": {Node: "A", Finished: []wire.EndedJob{{ID: "video_2", GPUMs: wire.MaxJobGPUMs + 1}}},
	} {
		if _, err := b.Sync(r, snap, none); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestClaim(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	b := New(Options{Now: func() time.Time { return now }})
	ms := now.UnixMilli()
	steps := []struct {
		node     string
		at       int64
		ok, late bool
	}{
		{"a", ms, true, false},
		{"a", ms, false, false},     // the same report again
		{"a", ms - 1, true, true},   // an older one never seen: late
		{"a", ms - 1, false, false}, // and its copy
		{"b", ms - 1, true, false},  // another node's times are its own
		{"a", ms + 1, true, false},  // the next one
		{"a", ms + 1, false, false}, // and its copy
		{"b", ms - 2, true, true},
		{"a", ms - lateWindow - 2, false, false}, // too far behind to tell
	}
	for i, s := range steps {
		late, err := b.Claim(s.node, s.at)
		if (err == nil) != s.ok || late != s.late {
			t.Fatalf("step %d: Claim(%s, %d) = %v, %v; want ok=%v late=%v", i, s.node, s.at, late, err, s.ok, s.late)
		}
	}
	// Only the last lateKept times are remembered: a late one older than
	// all of them cannot be told from a copy.
	for i := range lateKept {
		if _, err := b.Claim("c", ms+int64(10+i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Claim("c", ms+5); err == nil {
		t.Fatal("a time older than every remembered one was accepted")
	}
	if late, err := b.Claim("c", ms+10+lateKept/2+1000); err != nil || late {
		t.Fatalf("the next newest: %v %v", late, err)
	}
	// Long after the skew window a node's record is forgotten (the
	// signature check refuses such old reports anyway).
	now = now.Add(3 * wire.SyncClockSkew)
	if _, err := b.Claim("x", now.UnixMilli()); err != nil {
		t.Fatal(err)
	}
	if len(b.signed) != 1 || len(b.recent) != 1 {
		t.Fatalf("old records kept: %v", b.signed)
	}
}

// TestSlowSpeedRetried: a worker's slow fleet-wide estimate is passed on
// only while fresh; once many completions elsewhere have passed it by, the
// filters get no estimate (they take it as typical and measure it again).
// A quarantined worker's estimate is forgotten: re-admitted, it starts
// from the typical speed.
func TestSlowSpeedRetried(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	b := New(Options{Now: c.now})
	fast, slow := worker("10.0.0.1", 80, registry.StateActive, "T2V"), worker("10.0.0.2", 80, registry.StateActive, "T2V")
	snap := registry.Snapshot{Generation: 1, Workers: []registry.Worker{fast, slow}}
	none := func(string) bool { return false }
	const ms = 1000 // µs
	gpu := func(addr string, took float64) wire.Completion {
		return wire.Completion{Addr: addr, Cost: 10, Sent: 0, Done: int64(took * ms), GPU: true}
	}
	sync := func(cs ...wire.Completion) wire.PickView {
		t.Helper()
		v, err := b.Sync(wire.LoadReport{Node: "A", Completions: cs}, snap, none)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	v := sync(gpu("10.0.0.1:80", 100), gpu("10.0.0.2:80", 400))
	if v.Workers[1].MsPerCost < 39 {
		t.Fatalf("slow worker's fresh estimate = %v, want 40", v.Workers[1].MsPerCost)
	}
	// Image completions elsewhere age the slow worker's estimate (merged:
	// each sync's completions are taken once a later one passes the
	// window).
	for i := range 80 {
		at := int64(1000+i*1000) * ms
		v = sync(wire.Completion{Addr: "10.0.0.1:80", Cost: 10, Sent: at, Done: at + 100*ms})
	}
	if v.Workers[0].MsPerCost == 0 {
		t.Fatal("the fast worker's estimate was withheld")
	}
	if got := v.Workers[1].MsPerCost; got != 0 {
		t.Fatalf("stale slow estimate passed on: %v", got)
	}
	// Quarantined then back: no estimate at all, even before it ages.
	v = sync(gpu("10.0.0.2:80", 400))
	if v.Workers[1].MsPerCost == 0 {
		t.Fatal("a fresh sample did not count")
	}
	snap.Workers[1].State = registry.StateQuarantined
	sync()
	snap.Workers[1].State = registry.StateActive
	if v = sync(); v.Workers[1].MsPerCost != 0 {
		t.Fatalf("re-admitted worker kept its old estimate %v", v.Workers[1].MsPerCost)
	}
}

// TestWorkersWord: a fresh reading passes on the requests no Envoy counts
// and, when the worker held none, since when; a stale one nothing. Jobs a
// worker's list shows ended go to every Envoy.
func TestWorkersWord(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	b := New(Options{Now: c.now})
	w1, w2 := worker("10.0.0.1", 80, registry.StateActive, "T2V"), worker("10.0.0.2", 80, registry.StateActive, "T2V")
	snap := registry.Snapshot{Generation: 1, Workers: []registry.Worker{w1, w2}}
	none := func(string) bool { return false }
	sync := func(node string, hosts ...wire.HostReport) wire.PickView {
		t.Helper()
		v, err := b.Sync(wire.LoadReport{Node: node, Hosts: hosts}, snap, none)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	sync("B", wire.HostReport{Addr: "10.0.0.1:80", Work: 10, Requests: 1})
	b.SetWord("10.0.0.1:80", workerword.Word{At: c.t, Scheduler: &workerword.Scheduler{Queued: 2, Running: 1}}) // 3 held, B counts 1, A 1 (below)
	b.SetWord("10.0.0.2:80", workerword.Word{At: c.t, Scheduler: &workerword.Scheduler{Queued: 0, Running: 0}})
	v := sync("A", wire.HostReport{Addr: "10.0.0.1:80", Work: 10, Requests: 1})
	if v.Workers[0].ForeignRequests != 0 {
		t.Fatalf("one reading made foreign work: %+v", v.Workers[0])
	}
	c.t = c.t.Add(500 * time.Millisecond)
	b.SetWord("10.0.0.1:80", workerword.Word{At: c.t, Scheduler: &workerword.Scheduler{Queued: 2, Running: 1}}) // the second reading in a row
	b.SetWord("10.0.0.2:80", workerword.Word{At: c.t, Scheduler: &workerword.Scheduler{Queued: 0, Running: 0}})
	v = sync("A", wire.HostReport{Addr: "10.0.0.1:80", Work: 10, Requests: 1})
	if v.Workers[0].ForeignRequests != 1 || v.Workers[0].IdleAt != 0 {
		t.Fatalf("busy worker: %+v, want 1 foreign request", v.Workers[0])
	}
	if v.Workers[1].ForeignRequests != 0 || v.Workers[1].IdleAt != c.t.UnixMicro() {
		t.Fatalf("idle worker: %+v, want idle since the reading", v.Workers[1])
	}
	if !b.Counted("10.0.0.1:80") || b.Counted("10.0.0.2:80") {
		t.Fatal("Counted is wrong")
	}
	if h := b.Hosts()["10.0.0.1:80"]; h.Word == nil || h.Word.Queued != 2 || h.Word.Running != 1 {
		t.Fatalf("Hosts' word = %+v", h.Word)
	}
	c.t = c.t.Add(2 * wordFresh)
	v = sync("A")
	if v.Workers[0].ForeignRequests != 0 || v.Workers[1].IdleAt != 0 {
		t.Fatalf("a stale reading was used: %+v", v.Workers)
	}
	// A request that ended after the worker was read is still in the
	// reading, but no Envoy counts it: it is not another client's.
	c.t = c.t.Add(3 * time.Second)
	sync("A", wire.HostReport{Addr: "10.0.0.2:80", Work: 10, Requests: 1})
	sync("B")
	b.SetWord("10.0.0.2:80", workerword.Word{At: c.t, Scheduler: &workerword.Scheduler{Queued: 0, Running: 1}})
	c.t = c.t.Add(100 * time.Millisecond)
	if v := sync("A"); v.Workers[1].ForeignRequests != 0 {
		t.Fatalf("a request just answered passed for a foreign one: %+v", v.Workers[1])
	}
	// Long after, with nothing counted, two readings in a row: foreign.
	c.t = c.t.Add(2 * time.Second)
	b.SetWord("10.0.0.2:80", workerword.Word{At: c.t, Scheduler: &workerword.Scheduler{Queued: 0, Running: 1}})
	c.t = c.t.Add(500 * time.Millisecond)
	b.SetWord("10.0.0.2:80", workerword.Word{At: c.t, Scheduler: &workerword.Scheduler{Queued: 0, Running: 1}})
	if v := sync("A"); v.Workers[1].ForeignRequests != 1 {
		t.Fatalf("work no Envoy counted for seconds: %+v, want 1 foreign request", v.Workers[1])
	}

	b.JobsEnded([]wire.EndedJob{{ID: "video_1", GPUMs: 2500}})
	for _, node := range []string{"A", "B"} {
		if v := sync(node); len(v.Finished) != 1 || v.Finished[0].ID != "video_1" {
			t.Fatalf("Envoy %s got %v, want the worker's ended job", node, v.Finished)
		}
	}
}

// TestFailingWorkerLeavesTheQueuesView: a worker an Envoy reports failing
// is not in the queue's view until that Envoy's next report clears it; a
// queue call's note of its load does not clear it.
func TestFailingWorkerLeavesTheQueuesView(t *testing.T) {
	b := New(Options{})
	snap := registry.Snapshot{Generation: 1, Workers: []registry.Worker{worker("10.0.0.1", 80, registry.StateActive, "T2I"), worker("10.0.0.2", 80, registry.StateActive, "T2I")}}
	none := func(string) bool { return false }
	addrs := func() []string {
		var out []string
		for _, w := range b.FleetView(snap, none).Workers {
			out = append(out, w.Addr)
		}
		return out
	}
	if _, err := b.Sync(wire.LoadReport{Node: "A", Hosts: []wire.HostReport{{Addr: "10.0.0.1:80", Failing: true}}}, snap, none); err != nil {
		t.Fatal(err)
	}
	if got := addrs(); fmt.Sprint(got) != "[10.0.0.2:80]" {
		t.Fatalf("queue's view with 10.0.0.1 failing: %v", got)
	}
	if err := b.Note("A", []wire.HostReport{{Addr: "10.0.0.1:80"}}, time.Now().UnixMilli()); err != nil {
		t.Fatal(err)
	}
	if got := addrs(); fmt.Sprint(got) != "[10.0.0.2:80]" {
		t.Fatalf("a note cleared the failing mark: %v", got)
	}
	if _, err := b.Sync(wire.LoadReport{Node: "A"}, snap, none); err != nil {
		t.Fatal(err)
	}
	if got := addrs(); len(got) != 2 {
		t.Fatalf("after a report without the mark: %v", got)
	}
}

// TestOverdueWorkerIsSuspect: a worker one Envoy reports overdue leaves
// every view (the queue's and another Envoy's), is listed as suspect and
// announced once; a queue call's partial note keeps the mark; the next
// report without it brings the worker back, announced too.
func TestOverdueWorkerIsSuspect(t *testing.T) {
	type change struct {
		addr    string
		suspect bool
	}
	var changes []change
	b := New(Options{Suspected: func(addr string, _ wire.Overdue, suspect bool) { changes = append(changes, change{addr, suspect}) }})
	snap := registry.Snapshot{Generation: 1, Workers: []registry.Worker{worker("10.0.0.1", 80, registry.StateActive, "T2I"), worker("10.0.0.2", 80, registry.StateActive, "T2I")}}
	none := func(string) bool { return false }
	addrs := func(v wire.PickView) string {
		var out []string
		for _, w := range v.Workers {
			out = append(out, w.Addr)
		}
		return fmt.Sprint(out)
	}
	overdue := &wire.Overdue{RanMs: 90_000, ExpectedMs: 5_000}
	if _, err := b.Sync(wire.LoadReport{Node: "A", Hosts: []wire.HostReport{{Addr: "10.0.0.1:80", Work: 5, Requests: 1, Overdue: overdue}}}, snap, none); err != nil {
		t.Fatal(err)
	}
	other, err := b.Sync(wire.LoadReport{Node: "B"}, snap, none)
	if err != nil {
		t.Fatal(err)
	}
	if got := addrs(other); got != "[10.0.0.2:80]" {
		t.Fatalf("another Envoy's view with 10.0.0.1 overdue: %s", got)
	}
	if got := addrs(b.FleetView(snap, none)); got != "[10.0.0.2:80]" {
		t.Fatalf("the queue's view with 10.0.0.1 overdue: %s", got)
	}
	if s := b.Suspects(); len(s) != 1 || s["10.0.0.1:80"].RanMs != 90_000 || s["10.0.0.1:80"].Since.IsZero() {
		t.Fatalf("suspects %+v", s)
	}
	if err := b.Note("A", []wire.HostReport{{Addr: "10.0.0.1:80", Work: 5, Requests: 1}}, time.Now().UnixMilli()); err != nil {
		t.Fatal(err)
	}
	if len(b.Suspects()) != 1 {
		t.Fatal("a queue call's note cleared the overdue mark")
	}
	if _, err := b.Sync(wire.LoadReport{Node: "A"}, snap, none); err != nil {
		t.Fatal(err)
	}
	if got := addrs(b.FleetView(snap, none)); got != "[10.0.0.1:80 10.0.0.2:80]" {
		t.Fatalf("after the request ended: %s", got)
	}
	if fmt.Sprint(changes) != "[{10.0.0.1:80 true} {10.0.0.1:80 false}]" {
		t.Fatalf("announced %v, want suspect once then back once", changes)
	}
	if _, err := b.Sync(wire.LoadReport{Node: "A", Hosts: []wire.HostReport{{Addr: "10.0.0.1:80", Overdue: &wire.Overdue{RanMs: -1}}}}, snap, none); err == nil {
		t.Fatal("a negative overdue time was accepted")
	}
}
