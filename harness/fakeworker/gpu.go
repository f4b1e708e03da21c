package fakeworker

import (
	"context"
	"sync"
	"time"
)

// job is one unit of GPU work: a generation or a weight update.
type job struct {
	kind     string
	cost     time.Duration
	enqueued time.Time
	// run is called on the GPU goroutine when the job's time is up; it may
	// change the worker's state (a weight update does).
	run     func()
	started chan struct{}
	done    chan struct{}
	// startedAt is written by the GPU goroutine before started is closed.
	startedAt time.Time
	// client is the request's context, if a client waits for the job: a
	// job that starts after it ended is work nobody will see (sglang runs
	// it all the same).
	client context.Context
}

// gpu runs jobs one at a time in arrival order, like sglang-diffusion's
// scheduler with its default single in-flight request.
type gpu struct {
	mu    sync.Mutex
	cond  *sync.Cond
	queue []*job
	// ready is closed once warm-up is over.
	ready chan struct{}

	busy      time.Duration
	waitTotal time.Duration
	waitMax   time.Duration
	maxDepth  int
	processed int
	// abandoned counts jobs that started after their client had gone.
	abandoned int
	// slowdown, if set, multiplies a generation's time as it starts (0:
	// full speed): a GPU that slows down slows the work it has not begun.
	slowdown func() float64
	// headRunning: the job at the head of the queue has started.
	headRunning bool
}

func newGPU() *gpu {
	g := &gpu{ready: make(chan struct{})}
	g.cond = sync.NewCond(&g.mu)
	return g
}

func (g *gpu) submit(j *job) {
	j.enqueued = time.Now()
	j.started = make(chan struct{})
	j.done = make(chan struct{})
	g.mu.Lock()
	g.queue = append(g.queue, j)
	if d := len(g.queue); d > g.maxDepth {
		g.maxDepth = d
	}
	g.mu.Unlock()
	g.cond.Signal()
}

// depth counts queued jobs, including the one running.
func (g *gpu) depth() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.queue)
}

// loop processes jobs until ctx ends. The head of the queue stays in the
// queue while it runs, so depth counts it.
func (g *gpu) loop(ctx context.Context, warmup time.Duration) {
	if warmup > 0 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(warmup):
		}
	}
	close(g.ready)
	stop := context.AfterFunc(ctx, func() { g.cond.Broadcast() })
	defer stop()
	for {
		g.mu.Lock()
		for len(g.queue) == 0 && ctx.Err() == nil {
			g.cond.Wait()
		}
		if ctx.Err() != nil {
			g.mu.Unlock()
			return
		}
		j := g.queue[0]
		g.headRunning = true
		if j.client != nil && j.client.Err() != nil {
			g.abandoned++
		}
		g.mu.Unlock()

		j.startedAt = time.Now()
		wait := j.startedAt.Sub(j.enqueued)
		if g.slowdown != nil && j.kind != "update" {
			if f := g.slowdown(); f > 0 {
				j.cost = time.Duration(float64(j.cost) * f)
			}
		}
		close(j.started)
		if j.cost > 0 {
			t := time.NewTimer(j.cost)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		if j.run != nil {
			j.run()
		}
		g.mu.Lock()
		g.queue = g.queue[1:]
		g.headRunning = false
		g.busy += j.cost
		g.waitTotal += wait
		g.waitMax = max(g.waitMax, wait)
		g.processed++
		g.mu.Unlock()
		close(j.done)
	}
}

// generations counts the generations waiting and running, as
// sglang-diffusion's scheduler reports them (weight updates are not
// requests of its queue).
func (g *gpu) generations() (queued, running int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, j := range g.queue {
		switch {
		case j.kind == "update":
		case i == 0 && g.headRunning:
			running++
		default:
			queued++
		}
	}
	return queued, running
}

type gpuStats struct {
	QueueDepth    int     `json:"queue_depth"`
	MaxQueueDepth int     `json:"max_queue_depth"`
	Processed     int     `json:"processed"`
	BusySeconds   float64 `json:"busy_seconds"`
	WaitTotalSecs float64 `json:"queue_wait_total_seconds"`
	WaitMaxSecs   float64 `json:"queue_wait_max_seconds"`
	Warm          bool    `json:"warm"`
	// StartedAfterClientGone counts generations that started after their
	// client had disconnected.
	StartedAfterClientGone int `json:"started_after_client_gone"`
}

func (g *gpu) stats() gpuStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	warm := false
	select {
	case <-g.ready:
		warm = true
	default:
	}
	return gpuStats{
		QueueDepth: len(g.queue), MaxQueueDepth: g.maxDepth, Processed: g.processed,
		BusySeconds: g.busy.Seconds(), WaitTotalSecs: g.waitTotal.Seconds(), WaitMaxSecs: g.waitMax.Seconds(), Warm: warm,
		StartedAfterClientGone: g.abandoned,
	}
}
