package leastwork

import (
	"reflect"
	"slices"
	"testing"
	"unsafe"

	"github.com/diffrouter/diffusion-router/wire"
)

func TestRecordsRoundTrip(t *testing.T) {
	for _, h := range []Host{
		{Addr: "127.0.0.1:8001", Work: 150, Requests: 3, MsPerCost: 0.25, Samples: 9, LastDone: 1_700_000_000_000_000,
			Streak: -2, SampledAt: 40, Failures: 1, GatewayFailures: 1, FailedAt: 77, OverdueAt: 88, OverdueRanMs: 9000, OverdueExpectMs: 700},
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
