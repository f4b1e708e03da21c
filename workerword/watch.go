package workerword

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/wire"
)

// Target is a worker to read.
type Target struct {
	// Addr names the worker as Envoy and the filters do ("ip:port").
	Addr string
	// URL is its base URL.
	URL string
	// Video: it holds video jobs, whose list is read.
	Video bool
	// Key is its key in the job book (jobid.WorkerKey): whose open jobs
	// are asked about one by one when it serves no job list.
	Key string
}

// Sink takes what the watcher reads (loadboard.Board).
type Sink interface {
	SetWord(addr string, w Word)
	JobsEnded(jobs []wire.EndedJob)
	// Counted reports whether any Envoy counts requests on the worker:
	// its job list is read only then.
	Counted(addr string) bool
}

// JobSource lists the jobs created on a worker that are not known to
// have ended (jobbook.Book), for a worker that serves no job list.
type JobSource interface {
	Open(worker string, since time.Time, limit int) []string
	Ended(worker, id string)
}

const (
	// DefaultInterval is how often each worker is read.
	DefaultInterval = 500 * time.Millisecond
	// DefaultMaxReadsPerSecond bounds the readings of the whole fleet:
	// beyond interval x it workers (100 at the default interval), each is
	// read less often, so a large fleet does not cost the control plane
	// (and the workers) a scrape storm: at 1,000 workers, every 5 s.
	DefaultMaxReadsPerSecond = 200
	// notServedRetry: a worker that serves no metrics (or no job list) is
	// asked again this much later (it may be restarted with
	// --enable-metrics, or upgraded).
	notServedRetry = 30 * time.Second
	// maxListPages bounds the pages of a job list one reading goes through.
	maxListPages = 10
	// listPage is sglang's largest page.
	listPage = 100
	// rememberReported bounds the ended job ids remembered per worker, so
	// that each is passed on once.
	rememberReported = 4096
	// parallel bounds the workers read at once.
	parallel = 16
	// pollsPerReading: a worker that serves no job list has its open jobs
	// asked about one by one, at most this many each reading (oldest
	// first: the worker runs them in that order, so the oldest open one
	// is the one running).
	pollsPerReading = 4
)

// Watcher reads every target's word each interval until its context ends.
type Watcher struct {
	Client   *http.Client
	Interval time.Duration
	// MaxReadsPerSecond bounds the readings per second over the whole
	// fleet (0: DefaultMaxReadsPerSecond).
	MaxReadsPerSecond float64
	// Targets lists the workers to read now.
	Targets func() []Target
	Sink    Sink
	// Jobs, if set, lists a worker's open jobs, polled one by one when it
	// serves no job list; OpenFor is how far back (leastwork.JobHold: a
	// job the filters no longer count needs no end).
	Jobs    JobSource
	OpenFor time.Duration
	Log     *logrus.Entry

	mu     sync.Mutex
	states map[string]*state
}

// state is what the watcher keeps of one worker between readings.
type state struct {
	noMetricsUntil time.Time
	// noListUntil: the worker served no job list; its jobs are polled
	// until then.
	noListUntil time.Time
	// cursor: every job up to it (in creation order) has ended and was
	// passed on.
	cursor   string
	reported map[string]bool
	order    []string
}

func (w *Watcher) state(addr string) *state {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.states == nil {
		w.states = map[string]*state{}
	}
	st, ok := w.states[addr]
	if !ok {
		st = &state{reported: map[string]bool{}}
		w.states[addr] = st
	}
	return st
}

// forget drops the states of workers no longer listed.
func (w *Watcher) forget(targets []Target) {
	keep := make(map[string]bool, len(targets))
	for _, t := range targets {
		keep[t.Addr] = true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for a := range w.states {
		if !keep[a] {
			delete(w.states, a)
		}
	}
}

// Run reads every target each interval until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	interval := w.Interval
	if interval <= 0 {
		interval = DefaultInterval
	}
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		started := time.Now()
		n := w.Once(ctx, interval)
		t.Reset(pace(interval, n, w.MaxReadsPerSecond) - time.Since(started))
	}
}

// pace is the time from one round's start to the next's: the interval, or
// longer when n workers at that interval would pass the reading budget.
func pace(interval time.Duration, n int, budget float64) time.Duration {
	if budget <= 0 {
		budget = DefaultMaxReadsPerSecond
	}
	return max(interval, time.Duration(float64(n)/budget*float64(time.Second)))
}

// Once reads every target one time, each bounded by timeout, and returns
// how many it read.
func (w *Watcher) Once(ctx context.Context, timeout time.Duration) int {
	targets := w.Targets()
	w.forget(targets)
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for _, tg := range targets {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			rctx, cancel := context.WithTimeout(ctx, 2*timeout)
			defer cancel()
			w.read(rctx, tg, w.state(tg.Addr))
		}()
	}
	wg.Wait()
	return len(targets)
}

func (w *Watcher) read(ctx context.Context, t Target, st *state) {
	now := time.Now()
	if now.After(st.noMetricsUntil) {
		body, code, err := w.get(ctx, t.URL+"/metrics")
		switch word, ok := ParseMetrics(body); {
		case err == nil && code == http.StatusOK && ok:
			word.At = now
			w.Sink.SetWord(t.Addr, word)
		case err == nil:
			// Served without the gauges (or not at all: 404 without
			// --enable-metrics): nothing to read for a while.
			st.noMetricsUntil = now.Add(notServedRetry)
		}
	}
	if !t.Video || !w.Sink.Counted(t.Addr) {
		return
	}
	if now.Before(st.noListUntil) {
		w.Sink.JobsEnded(w.pollJobs(ctx, t, st, now))
		return
	}
	ended, err := w.endedJobs(ctx, t, st)
	var nl noList
	switch {
	case errors.As(err, &nl):
		st.noListUntil = now.Add(notServedRetry)
		w.Sink.JobsEnded(w.pollJobs(ctx, t, st, now))
	case err != nil:
		w.Log.WithError(err).WithField("worker", t.URL).Debug("reading the worker's job list")
	default:
		w.Sink.JobsEnded(ended)
	}
}

func (w *Watcher) get(ctx context.Context, u string) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := w.Client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return body, resp.StatusCode, err
}
