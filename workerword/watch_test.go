package workerword

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/harness/fakeworker"
	"github.com/diffrouter/diffusion-router/wire"
)

type sink struct {
	mu    sync.Mutex
	words map[string][2]int64
	ended []wire.EndedJob
}

func (s *sink) SetWord(addr string, w Word) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.words[addr] = [2]int64{w.Scheduler.Queued, w.Scheduler.Running}
}
func (s *sink) JobsEnded(j []wire.EndedJob) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended = append(s.ended, j...)
}
func (s *sink) Counted(string) bool { return true }

func startWorker(t *testing.T, mutate func(*fakeworker.Config)) string {
	t.Helper()
	c := fakeworker.DefaultConfig()
	c.WorkerID, c.TaskType, c.TimeScale, c.Jitter = "w", "T2V", 0.001, 0
	if mutate != nil {
		mutate(&c)
	}
	s, err := fakeworker.New(c)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go s.Run(ctx)
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(func() { srv.Close(); cancel() })
	return srv.URL
}

// TestWatcher: each reading passes on the worker's gauges and, once each,
// the jobs its list shows ended (with their GPU time), also past a page,
// and after the job its place was kept by is deleted.
func TestWatcher(t *testing.T) {
	for _, metrics := range []bool{true, false} {
		base := startWorker(t, func(c *fakeworker.Config) { c.NoMetrics = !metrics })
		s := &sink{words: map[string][2]int64{}}
		w := &Watcher{Client: http.DefaultClient, Sink: s, Log: logrus.NewEntry(logrus.New()),
			Targets: func() []Target { return []Target{{Addr: "w:1", URL: base, Video: true}} }}
		create := func() string {
			resp, err := http.Post(base+"/v1/videos", "application/json", strings.NewReader(`{"prompt":"p","num_inference_steps":1,"size":"64x64"}`))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var v struct{ ID string }
			b, _ := io.ReadAll(resp.Body)
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatal(err)
			}
			return v.ID
		}
		var ids []string
		for range 130 { // past one page
			ids = append(ids, create())
		}
		ended := func(want int) map[string]int {
			deadline := time.Now().Add(10 * time.Second)
			for {
				w.Once(context.Background(), time.Second)
				s.mu.Lock()
				got := map[string]int{}
				for _, e := range s.ended {
					got[e.ID]++
					if e.GPUMs <= 0 {
						t.Errorf("job %s ended without its GPU time", e.ID)
					}
				}
				s.mu.Unlock()
				if len(got) >= want || time.Now().After(deadline) {
					return got
				}
			}
		}
		got := ended(len(ids))
		if len(got) != len(ids) {
			t.Fatalf("metrics=%v: %d of %d ended jobs passed on", metrics, len(got), len(ids))
		}
		for id, n := range got {
			if n != 1 {
				t.Fatalf("job %s passed on %d times", id, n)
			}
		}
		// The job the cursor rests on is deleted: the list starts over,
		// and only new jobs are passed on.
		req, _ := http.NewRequest("DELETE", base+"/v1/videos/"+ids[len(ids)-1], nil)
		if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
			t.Fatalf("delete: %v %v", resp, err)
		}
		ids = append(ids[:len(ids)-1], create())
		if got := ended(len(ids) + 1); len(got) != len(ids)+1 {
			t.Fatalf("after the cursor's job was deleted: %d passed on, want %d", len(got), len(ids)+1)
		}
		s.mu.Lock()
		_, read := s.words["w:1"]
		s.mu.Unlock()
		if read != metrics {
			t.Fatalf("metrics=%v: gauges read %v", metrics, read)
		}
	}
}

func TestPaceKeepsTheReadingBudget(t *testing.T) {
	for _, tt := range []struct {
		interval time.Duration
		n        int
		budget   float64
		want     time.Duration
	}{
		{500 * time.Millisecond, 3, 0, 500 * time.Millisecond},
		{500 * time.Millisecond, 100, 0, 500 * time.Millisecond},
		{500 * time.Millisecond, 300, 0, 1500 * time.Millisecond},
		{500 * time.Millisecond, 1000, 0, 5 * time.Second},
		{500 * time.Millisecond, 1000, 1000, time.Second},
		{2 * time.Second, 1000, 1000, 2 * time.Second},
	} {
		if got := pace(tt.interval, tt.n, tt.budget); got != tt.want {
			t.Errorf("pace(%v, %d workers, budget %v) = %v, want %v", tt.interval, tt.n, tt.budget, got, tt.want)
		}
	}
}

// openJobs is a job book stand-in: the jobs created, less those ended.
type openJobs struct {
	mu    sync.Mutex
	ids   []string
	asked int
}

func (o *openJobs) Open(worker string, _ time.Time, limit int) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.asked++
	return append([]string(nil), o.ids[:min(limit, len(o.ids))]...)
}

func (o *openJobs) Ended(_, id string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ids = slices.DeleteFunc(o.ids, func(x string) bool { return x == id })
}

// TestWatcherPollsJobsWithoutAList: a worker that serves neither a job
// list nor metrics has its open jobs asked about one by one (oldest first,
// stopping at one still running): each passed on once when it ends, a
// deleted one too.
func TestWatcherPollsJobsWithoutAList(t *testing.T) {
	base := startWorker(t, func(c *fakeworker.Config) { c.NoMetrics, c.NoJobList, c.TimeScale = true, true, 0.01 })
	s := &sink{words: map[string][2]int64{}}
	book := &openJobs{}
	w := &Watcher{Client: http.DefaultClient, Sink: s, Log: logrus.NewEntry(logrus.New()), Jobs: book, OpenFor: time.Hour,
		Targets: func() []Target { return []Target{{Addr: "w:1", URL: base, Video: true, Key: "k1"}} }}
	for range 5 {
		resp, err := http.Post(base+"/v1/videos", "application/json", strings.NewReader(`{"prompt":"p","num_inference_steps":4,"size":"256x256"}`))
		if err != nil {
			t.Fatal(err)
		}
		var v struct{ ID string }
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		book.ids = append(book.ids, v.ID)
	}
	all := slices.Clone(book.ids)
	req, _ := http.NewRequest("DELETE", base+"/v1/videos/"+all[4], nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("delete: %v %v", resp, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		w.Once(context.Background(), time.Second)
		s.mu.Lock()
		n := len(s.ended)
		s.mu.Unlock()
		if n >= len(all) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // the jobs run on the worker's clock
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]int{}
	for _, e := range s.ended {
		seen[e.ID]++
	}
	for _, id := range all {
		if seen[id] != 1 {
			t.Fatalf("job %s passed on %d times (all: %v)", id, seen[id], seen)
		}
	}
	if len(book.ids) != 0 {
		t.Fatalf("jobs still open in the book: %v", book.ids)
	}
}
