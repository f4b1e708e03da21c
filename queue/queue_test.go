package queue

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/harness/poll"

	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/wire"
)

type outcome struct {
	key   string
	grant Grant
	err   error
}

// waitAll queues each request in its own goroutine, in order (each is in
// the queue before the next is sent), and returns where outcomes arrive.
func waitAll(t *testing.T, q *Queue, rs ...Request) <-chan outcome {
	t.Helper()
	out := make(chan outcome, len(rs))
	for _, r := range rs {
		before := q.Status().Waiting
		go func() {
			g, err := q.Wait(context.Background(), r)
			out <- outcome{r.Ticket, g, err}
		}()
		eventually(t, "request "+r.Ticket+" queued", func() bool { return q.Status().Waiting != before })
	}
	return out
}

// eventually polls cond until it holds, failing the test after 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 5*time.Second, time.Millisecond, what, cond)
}

func req(ticket string, prio int, tenant string) Request {
	return Request{Key: Key{Node: "envoy-a", Ticket: ticket}, Priority: prio, Tenant: tenant, Cost: 10, Pool: leastwork.PoolImage}
}

// fleet is n image workers, each running busy[i] requests, one slot each;
// reports are always newer than any grant (so grants count as reported).
func fleet(busy ...int64) Fleet {
	var v wire.PickView
	for i, b := range busy {
		v.Workers = append(v.Workers, wire.PickWorker{Addr: fmt.Sprintf("10.0.0.%d:80", i+1), Image: true, RemoteRequests: b})
	}
	return Fleet{View: v, DefaultSlots: 1, ReportedAt: func(string) time.Time { return time.Now().Add(time.Hour) }}
}

// grants dispatches one slot at a time and returns the tickets in the
// order they were granted.
func grants(t *testing.T, q *Queue, out <-chan outcome, n int) []string {
	t.Helper()
	var order []string
	for range n {
		if got := q.Dispatch(fleet(0)); got != 1 {
			t.Fatalf("dispatch granted %d, want 1", got)
		}
		select {
		case o := <-out:
			if o.err != nil {
				t.Fatalf("%s: %v", o.key, o.err)
			}
			order = append(order, o.key)
		case <-time.After(5 * time.Second):
			t.Fatal("no grant arrived")
		}
	}
	return order
}

func TestPriorityFirstThenArrival(t *testing.T) {
	q := New(Options{})
	out := waitAll(t, q, req("a", 0, "t"), req("b", 0, "t"), req("urgent", 5, "t"), req("c", 0, "t"))
	got := grants(t, q, out, 4)
	want := []string{"urgent", "a", "b", "c"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("granted %v, want %v", got, want)
	}
}

func TestTenantsShareByServedCost(t *testing.T) {
	q := New(Options{Weights: map[string]float64{"heavy": 2}})
	var rs []Request
	for i := range 6 {
		rs = append(rs, req(fmt.Sprintf("burst%d", i), 0, "trainer"))
	}
	rs = append(rs, req("eval0", 0, "eval"), req("eval1", 0, "eval"))
	got := grants(t, q, waitAll(t, q, rs...), 8)
	// The second tenant arrived last but takes turns at once.
	pos := map[string]int{}
	for i, k := range got {
		pos[k] = i
	}
	if pos["eval0"] > 2 || pos["eval1"] > 4 {
		t.Fatalf("granted %v: the second tenant waited behind the burst", got)
	}
	// Weights: a tenant of weight 2 gets two turns to one.
	q = New(Options{Weights: map[string]float64{"heavy": 2}})
	rs = nil
	for i := range 6 {
		rs = append(rs, req(fmt.Sprintf("h%d", i), 0, "heavy"), req(fmt.Sprintf("l%d", i), 0, "light"))
	}
	got = grants(t, q, waitAll(t, q, rs...), 6)
	heavy := 0
	for _, k := range got {
		if k[0] == 'h' {
			heavy++
		}
	}
	if heavy != 4 {
		t.Fatalf("granted %v: weight 2 got %d of 6 turns, want 4", got, heavy)
	}
}

func TestOnlyFreeSlotsAndMatchingWorkers(t *testing.T) {
	q := New(Options{})
	video := Request{Key: Key{"n", "video"}, Tenant: "t", Cost: 100, Pool: leastwork.PoolVideo}
	out := waitAll(t, q, video, req("image", 0, "t"))
	// Two image workers, one busy, and a busy video worker: the video
	// request (first in order) has no free worker and waits; the image
	// request goes to the free one.
	withVideo := fleet(1, 0)
	withVideo.View.Workers = append(withVideo.View.Workers, wire.PickWorker{Addr: "10.0.0.9:80", Video: true, RemoteRequests: 1})
	if n := q.Dispatch(withVideo); n != 1 {
		t.Fatalf("granted %d, want 1", n)
	}
	o := <-out
	if o.key != "image" || o.grant.Worker != "10.0.0.2:80" {
		t.Fatalf("granted %+v, want the image request on the free worker", o)
	}
	// A grant not yet in any report still holds its slot.
	f := fleet(1, 0)
	f.ReportedAt = func(string) time.Time { return time.Time{} }
	q2 := New(Options{})
	out2 := waitAll(t, q2, req("x", 0, "t"), req("y", 0, "t"))
	if n := q2.Dispatch(f); n != 1 {
		t.Fatalf("granted %d on one free slot, want 1", n)
	}
	<-out2
	if n := q2.Dispatch(f); n != 0 {
		t.Fatalf("granted %d more on a slot an unreported grant holds", n)
	}
	// Once its Envoy reports after the grant, the report's count is what
	// counts.
	f.ReportedAt = func(string) time.Time { return time.Now().Add(time.Second) }
	if n := q2.Dispatch(f); n != 1 {
		t.Fatalf("granted %d after the report freed the slot, want 1", n)
	}
	if st := q2.Status(); st.Waiting != 0 || st.Granted != 2 {
		t.Fatalf("status %+v", st)
	}
	// Slots above one: a worker running one of two takes another.
	f = fleet(1)
	f.DefaultSlots = 2
	q3 := New(Options{})
	waitAll(t, q3, req("z", 0, "t"))
	if n := q3.Dispatch(f); n != 1 {
		t.Fatalf("granted %d on a two-slot worker running one, want 1", n)
	}
	// A worker's own slots win over the default.
	f = fleet(2)
	f.View.Workers[0].Slots = 3
	q4 := New(Options{})
	waitAll(t, q4, req("w", 0, "t"))
	if n := q4.Dispatch(f); n != 1 {
		t.Fatalf("granted %d on a worker with three slots running two, want 1", n)
	}
}

func TestRefusalsTimeoutsAndCancels(t *testing.T) {
	q := New(Options{MaxQueued: 2, MaxPerTenant: 1})
	waitAll(t, q, req("a", 0, "t1"))
	if _, err := q.Wait(context.Background(), req("b", 0, "t1")); !errors.Is(err, ErrTenantFull) {
		t.Fatalf("second request of a tenant at its bound: %v", err)
	}
	if _, err := q.Wait(context.Background(), req("a", 0, "t2")); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("same ticket twice: %v", err)
	}
	out := waitAll(t, q, req("c", 0, "t2"))
	if _, err := q.Wait(context.Background(), req("d", 0, "t3")); !errors.Is(err, ErrFull) {
		t.Fatalf("request over --max-queued: %v", err)
	}
	// The client of c leaves: it is gone from the queue and never granted.
	if !q.Cancel(Key{"envoy-a", "c"}) {
		t.Fatal("cancel of a waiting request said it was not waiting")
	}
	if o := <-out; !errors.Is(o.err, ErrCancelled) {
		t.Fatalf("cancelled request: %+v", o)
	}
	if q.Cancel(Key{"envoy-a", "c"}) {
		t.Fatal("cancelled twice")
	}
	// a is the only one left: one grant, then nothing.
	if n := q.Dispatch(fleet(0, 0)); n != 1 {
		t.Fatalf("granted %d, want 1", n)
	}
	// A wait that passes the timeout ends with ErrTimeout and leaves.
	qt := New(Options{Timeout: 50 * time.Millisecond})
	if _, err := qt.Wait(context.Background(), req("slow", 0, "t")); !errors.Is(err, ErrTimeout) {
		t.Fatalf("wait past the timeout: %v", err)
	}
	if st := qt.Status(); st.Waiting != 0 || st.TimedOut != 1 {
		t.Fatalf("after a timeout: %+v", st)
	}
	// A context that ends takes the request out too.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := qt.Wait(ctx, req("ctx", 0, "t")); done <- err }()
	eventually(t, "the request queued", func() bool { return qt.Status().Waiting > 0 })
	cancel()
	if err := <-done; !errors.Is(err, ErrCancelled) {
		t.Fatalf("wait whose context ended: %v", err)
	}
	if n := qt.Dispatch(fleet(0)); n != 0 {
		t.Fatalf("granted %d requests that had left", n)
	}
}

// TestTenantsBounded: while MaxTenants tenants have requests waiting, new
// names wait in one shared lane (OthersTenant), so a client that names a
// thousand tenants gets one share: a tenant already there is served every
// few grants, not once per thousand. Tenants the operator weighted always
// get their own lane, and a name gets its own again once there is room.
func TestTenantsBounded(t *testing.T) {
	q := New(Options{MaxTenants: 3, Weights: map[string]float64{"vip": 2}})
	out := waitAll(t, q, req("h1", 0, "honest"), req("h2", 0, "honest"), req("h3", 0, "honest"))
	var crowd []Request
	for i := range 40 {
		crowd = append(crowd, req(fmt.Sprintf("c%d", i), 0, fmt.Sprintf("sybil%d", i)))
	}
	crowdOut := waitAll(t, q, crowd...)
	vipOut := waitAll(t, q, req("v1", 0, "vip"))
	lanes := func() map[string]int {
		m := map[string]int{}
		for _, ts := range q.Status().Tenants {
			if ts.Waiting > 0 {
				m[ts.Tenant] = ts.Waiting
			}
		}
		return m
	}
	// honest, sybil0, sybil1 fill the bound; the other 38 share a lane.
	if l := lanes(); len(l) != 5 || l[OthersTenant] != 38 || l["honest"] != 3 || l["vip"] != 1 {
		t.Fatalf("lanes %v, want honest, sybil0, sybil1, vip and %s with 38", l, OthersTenant)
	}
	// One free slot at a time: honest's three are served within the
	// first 3 x 5 grants (five lanes take turns), not after the crowd.
	servedHonest := 0
	for i := 0; i < 15 && servedHonest < 3; i++ {
		if q.Dispatch(fleet(0)) != 1 {
			t.Fatalf("grant %d: nothing granted", i)
		}
		select {
		case <-out:
			servedHonest++
		case <-crowdOut:
		case <-vipOut:
		}
	}
	if servedHonest != 3 {
		t.Fatalf("honest got %d of its 3 in the first 15 grants behind 40 self-named tenants", servedHonest)
	}
	// Room again (only the shared lane waits): a new name has its own.
	waitAll(t, q, req("late", 0, "latecomer"))
	if l := lanes(); l["latecomer"] != 1 {
		t.Fatalf("a new name with room in the bound waits in %v", l)
	}
}

// TestIdleTenantsForgotten: a tenant with nothing waiting and no grant for
// TenantIdle leaves GET /queue and stops counting against MaxTenants.
func TestIdleTenantsForgotten(t *testing.T) {
	now := time.Unix(1000, 0)
	q := New(Options{MaxTenants: 2, TenantIdle: time.Minute, Now: func() time.Time { return now }})
	out := waitAll(t, q, req("a", 0, "t1"), req("b", 0, "t2"))
	grants(t, q, out, 2)
	if n := len(q.Status().Tenants); n != 2 {
		t.Fatalf("%d tenants remembered right after their grants, want 2", n)
	}
	now = now.Add(2 * time.Minute)
	if st := q.Status(); len(st.Tenants) != 0 {
		t.Fatalf("idle tenants still listed: %+v", st.Tenants)
	}
	// And a new name gets its own lane again.
	waitAll(t, q, req("c", 0, "t3"))
	if st := q.Status(); len(st.Tenants) != 1 || st.Tenants[0].Tenant != "t3" {
		t.Fatalf("after forgetting, a new tenant waits as %+v", st.Tenants)
	}
}

// TestDispatchIsCheapAtScale: a thousand workers and thousands waiting;
// each grant weighs a bounded sample, so a dispatch that grants every
// free slot stays quick.
func TestDispatchIsCheapAtScale(t *testing.T) {
	q := New(Options{})
	for i := range 5000 {
		w, err := q.add(req(fmt.Sprintf("r%d", i), i%3, fmt.Sprintf("t%d", i%50)))
		if err != nil || w == nil {
			t.Fatal(err)
		}
	}
	busy := make([]int64, 1000)
	for i := range busy {
		busy[i] = int64(i % 2) // half the fleet free
	}
	if n := q.Dispatch(fleet(busy...)); n != 500 {
		t.Fatalf("granted %d of 500 free slots", n)
	}
	if st := q.Status(); st.Waiting != 4500 {
		t.Fatalf("%d waiting after 500 grants of 5000", st.Waiting)
	}
}

// BenchmarkGrant: one grant with a thousand workers (one free) and five
// thousand requests of fifty tenants waiting; it must not grow with
// either.
func BenchmarkGrant(b *testing.B) {
	for _, size := range []struct{ workers, waiting int }{{8, 50}, {1000, 5000}} {
		b.Run(fmt.Sprintf("%dworkers-%dwaiting", size.workers, size.waiting), func(b *testing.B) {
			q := New(Options{MaxQueued: 1 << 20})
			seq := 0
			add := func() {
				seq++
				if _, err := q.add(req(fmt.Sprintf("r%d", seq), seq%3, fmt.Sprintf("t%d", seq%50))); err != nil {
					b.Fatal(err)
				}
			}
			for range size.waiting {
				add()
			}
			busy := make([]int64, size.workers)
			for i := range busy {
				busy[i] = 1
			}
			f := fleet(busy...)
			b.ResetTimer()
			for i := range b.N {
				f.View.Workers[i%size.workers].RemoteRequests = 0
				if n := q.Dispatch(f); n != 1 {
					b.Fatalf("granted %d", n)
				}
				f.View.Workers[i%size.workers].RemoteRequests = 1
				add()
			}
		})
	}
}

// TestLongRequestWaitsForAFastWorker: a long request that a busy fast
// worker would finish far sooner than the free slow one waits for it,
// while a short request behind it takes the slow worker.
func TestLongRequestWaitsForAFastWorker(t *testing.T) {
	q := New(Options{})
	long := req("long", 0, "t")
	long.Cost = 100
	short := req("short", 0, "t")
	short.Cost = 1
	out := waitAll(t, q, long, short)
	f := fleet(1, 0)
	f.View.Workers[0].MsPerCost, f.View.Workers[0].RemoteWork = 1, 10 // fast, busy
	f.View.Workers[1].MsPerCost = 10                                  // slow, free
	if n := q.Dispatch(f); n != 1 {
		t.Fatalf("granted %d, want 1", n)
	}
	if o := <-out; o.key != "short" || o.grant.Worker != "10.0.0.2:80" {
		t.Fatalf("granted %+v, want the short request on the slow worker", o)
	}
	if st := q.Status(); st.Waiting != 1 {
		t.Fatalf("%d waiting, want the long request", st.Waiting)
	}
	// The fast worker frees: the long request goes there.
	f.View.Workers[0].RemoteRequests, f.View.Workers[0].RemoteWork = 0, 0
	f.View.Workers[1].RemoteRequests = 1
	if n := q.Dispatch(f); n != 1 {
		t.Fatalf("granted %d once the fast worker is free, want 1", n)
	}
	if o := <-out; o.key != "long" || o.grant.Worker != "10.0.0.1:80" {
		t.Fatalf("granted %+v, want the long request on the fast worker", o)
	}
}

// TestGrantAhead: a full worker is granted its next request Ahead before
// its running one is expected to end, one request deep, and not when its
// speed is unknown or the running request is long overdue.
func TestGrantAhead(t *testing.T) {
	type step struct {
		atMs     int
		busy     int64
		freed    uint64 // ends the Envoys reported so far
		want     int
		wantWake int // ms; -1: none
	}
	cases := []struct {
		name      string
		ahead     time.Duration
		msPerCost float64
		steps     []step
	}{
		{"ahead of each end", 20 * time.Millisecond, 10, []step{
			{0, 0, 0, 1, 80},    // a: a free slot; due at 100, so due a follower at 80
			{50, 1, 0, 0, 80},   // running, not due yet
			{85, 1, 0, 1, -1},   // b bound ahead: estimated due at 200
			{90, 2, 0, 0, -1},   // one deep only
			{120, 1, 1, 0, 200}, // a reported ended at 120: b runs from then, due at 220
			{185, 1, 1, 0, 200}, // so not yet at 185
			{205, 1, 1, 1, -1},  // c ahead
		}},
		{"estimates chained without reported ends", 20 * time.Millisecond, 10, []step{
			{0, 0, 0, 1, 80},
			{85, 1, 0, 1, -1},
			{120, 1, 0, 0, 180}, // b due at 200 by the estimate
			{185, 1, 0, 1, -1},
		}},
		{"not when long overdue", 20 * time.Millisecond, 10, []step{
			{0, 0, 0, 1, -1},
			{250, 1, 0, 0, -1}, // 150 ms overdue on a 100 ms request
		}},
		{"not with an unknown speed", 20 * time.Millisecond, 0, []step{
			{0, 0, 0, 1, -1},
			{95, 1, 0, 0, -1},
		}},
		{"off", 0, 10, []step{
			{0, 0, 0, 1, -1},
			{95, 1, 0, 0, -1},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t0 := time.Unix(1000, 0)
			now := t0
			q := New(Options{Ahead: tc.ahead, Now: func() time.Time { return now }})
			out := waitAll(t, q, req("a", 0, "t"), req("b", 0, "t"), req("c", 0, "t"), req("d", 0, "t"))
			for _, s := range tc.steps {
				now = t0.Add(time.Duration(s.atMs) * time.Millisecond)
				f := fleet(s.busy)
				f.View.Workers[0].MsPerCost = tc.msPerCost
				f.Freed = func(string) uint64 { return s.freed }
				if got := q.Dispatch(f); got != s.want {
					t.Fatalf("at %d ms with %d running: granted %d, want %d", s.atMs, s.busy, got, s.want)
				}
				for range s.want {
					<-out
				}
				wake := q.nextDue()
				if s.wantWake >= 0 && !wake.Equal(t0.Add(time.Duration(s.wantWake)*time.Millisecond)) {
					t.Fatalf("at %d ms: next due at %v, want %d ms", s.atMs, wake.Sub(t0), s.wantWake)
				}
			}
		})
	}
}

// TestGrantEndsWithItsReportedFree: a grant counts on its worker until a
// report shows it, or until the worker is reported to have freed as many
// slots as it ran requests then, plus this one's: a request shorter than a
// report's round trip does not keep its worker busy until the next sync.
func TestGrantEndsWithItsReportedFree(t *testing.T) {
	q := New(Options{})
	out := waitAll(t, q, req("a", 0, "t"), req("b", 0, "t"))
	var freed uint64 = 5
	f := fleet(0)
	f.ReportedAt = func(string) time.Time { return time.Time{} } // no report shows a grant
	f.Freed = func(string) uint64 { return freed }
	if n := q.Dispatch(f); n != 1 {
		t.Fatalf("granted %d, want 1", n)
	}
	<-out
	if n := q.Dispatch(f); n != 0 {
		t.Fatalf("granted %d to a worker whose grant is unreported and running", n)
	}
	freed = 6 // a's end
	if n := q.Dispatch(f); n != 1 {
		t.Fatalf("granted %d after the worker's end was reported, want 1", n)
	}
	<-out
}

// TestNoWorkerOfItsKind: a request no worker in rotation could take is
// answered ErrNoWorker at once (as Envoy answers 503 without the queue),
// unless the fleet is paused (an update, a sleep the queue waits out).
func TestNoWorkerOfItsKind(t *testing.T) {
	for _, paused := range []bool{false, true} {
		t.Run(fmt.Sprint("paused=", paused), func(t *testing.T) {
			q := New(Options{})
			video := Request{Key: Key{"n", "video"}, Tenant: "t", Cost: 100, Pool: leastwork.PoolVideo}
			out := waitAll(t, q, video, req("image", 0, "t"))
			f := fleet(1) // one image worker, busy
			f.Paused = paused
			if n := q.Dispatch(f); n != 0 {
				t.Fatalf("granted %d", n)
			}
			if paused {
				if w := q.Status().Waiting; w != 2 {
					t.Fatalf("%d waiting while paused, want 2", w)
				}
				return
			}
			select {
			case o := <-out:
				if o.key != "video" || !errors.Is(o.err, ErrNoWorker) {
					t.Fatalf("%s: %v, want the video request answered ErrNoWorker", o.key, o.err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the video request was not answered")
			}
			if w := q.Status().Waiting; w != 1 {
				t.Fatalf("%d waiting, want the image request still waiting for its busy worker", w)
			}
		})
	}
}
