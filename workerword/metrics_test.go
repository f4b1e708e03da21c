package workerword

import "testing"

func TestParseMetrics(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		q, r       int64
		ok         bool
	}{
		{"sglang's form", "# HELP sglang:diffusion_num_queue_reqs x\n# TYPE sglang:diffusion_num_queue_reqs gauge\nsglang:diffusion_num_queue_reqs 3.0\nsglang:diffusion_num_running_reqs 1.0\n", 3, 1, true},
		{"labels and timestamps", `sglang:diffusion_num_queue_reqs{pid="1",model_name="a{b}"} 2 1700000000` + "\n" + `sglang:diffusion_num_queue_reqs{pid="2"} 1` + "\nsglang:diffusion_num_running_reqs{pid=\"1\"} 0\n", 3, 0, true},
		{"other metrics only", "sglang:diffusion_num_queue_reqs_total 5\nprocess_cpu_seconds_total 1\n", 0, 0, false},
		{"one gauge missing", "sglang:diffusion_num_queue_reqs 1\n", 0, 0, false},
		{"garbage values", "sglang:diffusion_num_queue_reqs NaN\nsglang:diffusion_num_running_reqs -1\n", 0, 0, false},
		{"NaN alone", "sglang:diffusion_num_queue_reqs NaN\nsglang:diffusion_num_running_reqs 1\n", 0, 0, false},
		{"empty", "", 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, ok := ParseMetrics([]byte(tc.body))
			var q, r int64
			if w.Scheduler != nil {
				q, r = w.Scheduler.Queued, w.Scheduler.Running
			}
			if q != tc.q || r != tc.r || ok != tc.ok || ok != (w.Scheduler != nil) {
				t.Fatalf("= %d %d %v, want %d %d %v", q, r, ok, tc.q, tc.r, tc.ok)
			}
		})
	}
}

func TestParseJobList(t *testing.T) {
	jobs, err := ParseJobList([]byte(`{"object":"list","data":[{"id":"a","status":"completed","inference_time_s":2.5},{"id":"b","status":"in_progress","inference_time_s":null}]}`))
	if err != nil || len(jobs) != 2 || !jobs[0].Ended() || jobs[1].Ended() || *jobs[0].GPUSec != 2.5 || jobs[1].GPUSec != nil {
		t.Fatalf("= %+v %v", jobs, err)
	}
	if _, err := ParseJobList([]byte(`<html>`)); err == nil {
		t.Fatal("HTML accepted")
	}
}
