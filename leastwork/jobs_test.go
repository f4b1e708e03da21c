package leastwork

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/diffrouter/diffusion-router/wire"
)

func TestJobs(t *testing.T) {
	var j Jobs
	for i := range 3 {
		if out := j.Hold(Job{ID: fmt.Sprint("v", i), Addr: "a:1", Cost: int64(10 + i), Until: int64(100 * (i + 1))}); out != nil {
			t.Fatalf("hold %d dropped %v", i, out)
		}
	}
	back, err := DecodeJobs(j.AppendEncode(nil))
	if err != nil || !reflect.DeepEqual(back, j) {
		t.Fatalf("round trip = %+v, %v; want %+v", back, err, j)
	}
	if job, ok := j.Finish("v1"); !ok || job.Cost != 11 {
		t.Fatalf("finish v1 = %+v, %v", job, ok)
	}
	if _, ok := j.Finish("v1"); ok {
		t.Fatal("finished v1 twice")
	}
	if out := j.Expire(150); len(out) != 1 || out[0].ID != "v0" || len(j.List) != 1 || j.List[0].ID != "v2" {
		t.Fatalf("expire at 150 = %v, left %v", out, j.List)
	}

	var full Jobs
	for i := range MaxJobs {
		full.Hold(Job{ID: fmt.Sprint("v", i), Addr: "a:1", Cost: 1, Until: 1})
	}
	if out := full.Hold(Job{ID: "new", Addr: "a:1", Cost: 1, Until: 1}); len(out) != 1 || out[0].ID != "v0" || len(full.List) != MaxJobs {
		t.Fatalf("full list dropped %v, holds %d", out, len(full.List))
	}

	for name, b := range map[string][]byte{
		"format": {9},
		"cut":    j.AppendEncode(nil)[:5],
		"extra":  append(j.AppendEncode(nil), 0),
		"count":  {jobsFormat, 0xff, 0x7f},
	} {
		if _, err := DecodeJobs(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	if empty, err := DecodeJobs(nil); err != nil || len(empty.List) != 0 {
		t.Fatalf("empty input = %+v, %v", empty, err)
	}
}

// TestEndedList: jobs seen ending keep their GPU time through the shared
// list, which holds at most MaxFinished and refuses damage.
func TestEndedList(t *testing.T) {
	want := []wire.EndedJob{{ID: "video_1", GPUMs: 2500}, {ID: "video_2"}}
	var b []byte
	for _, e := range want {
		var ok bool
		if b, ok = AppendEnded(b, e); !ok {
			t.Fatalf("%v not added", e)
		}
	}
	if got, err := DecodeEnded(b); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip = %v, %v; want %v", got, err, want)
	}
	if _, err := DecodeEnded(b[:len(b)-1]); err == nil {
		t.Error("decoded a cut list")
	}
	if fresh, ok := AppendEnded(b[:len(b)-1], want[0]); !ok || !reflect.DeepEqual(fresh, b[:len(fresh)]) {
		t.Errorf("appending to a cut list = %v, %v; want a list of that job alone", fresh, ok)
	}
	if got, err := DecodeEnded(nil); err != nil || len(got) != 0 {
		t.Fatalf("empty input = %v, %v", got, err)
	}
	var full []byte
	for i := range MaxFinished {
		full, _ = AppendEnded(full, wire.EndedJob{ID: fmt.Sprint("v", i)})
	}
	if _, ok := AppendEnded(full, wire.EndedJob{ID: "one more"}); ok {
		t.Fatalf("a list of %d took one more", MaxFinished)
	}
}

func TestJobsEndBeforeAndShorten(t *testing.T) {
	var j Jobs
	for _, x := range []Job{
		{ID: "a", Addr: "w1", Cost: 1, Until: 100, Held: 10},
		{ID: "b", Addr: "w2", Cost: 1, Until: 100, Held: 10},
		{ID: "c", Addr: "w1", Cost: 1, Until: 100, Held: 50},
	} {
		j.Hold(x)
	}
	if ended := j.EndBefore(map[string]int64{"w1": 50, "w9": 1000}); len(ended) != 1 || ended[0].ID != "a" || len(j.List) != 2 {
		t.Fatalf("EndBefore(w1, 50) = %v, left %v", ended, j.List)
	}
	if got, ok := j.Shorten("c", 70); !ok || got.Until != 70 {
		t.Fatalf("Shorten(c, 70) = %+v %v", got, ok)
	}
	if got, _ := j.Shorten("c", 90); got.Until != 70 {
		t.Fatalf("Shorten lengthened a hold: %+v", got)
	}
	if _, ok := j.Shorten("zzz", 1); ok {
		t.Fatal("Shorten found a job not counted")
	}
	if ended := j.Expire(70); len(ended) != 1 || ended[0].ID != "c" {
		t.Fatalf("Expire(70) = %v", ended)
	}
	enc := j.AppendEncode(nil)
	back, err := DecodeJobs(enc)
	if err != nil || len(back.List) != 1 || back.List[0] != j.List[0] {
		t.Fatalf("round trip = %v %v", back, err)
	}
}
