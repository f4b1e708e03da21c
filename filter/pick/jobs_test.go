package pick

import (
	"fmt"
	"reflect"
	"testing"
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
