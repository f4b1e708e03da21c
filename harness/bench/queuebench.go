package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/diffrouter/diffusion-router/harness/fakeworker"
	"github.com/diffrouter/diffusion-router/wire"
)

// QueueConfig drives `bench queue`: the router-owned queue (late binding)
// against binding at arrival (early), each on its own fleet of stand-ins,
// one scenario at a time.
type QueueConfig struct {
	RouterBin string
	Workers   int
	Burst     int
	Service   time.Duration
	// Scenarios, if set, runs only these (by name).
	Scenarios []string
	// VideoJobs video creates of VideoTime each (the video scenarios).
	VideoJobs int
	VideoTime time.Duration
	Log       io.Writer
}

// QueueScenario is one scenario's numbers for one binding.
type QueueScenario struct {
	Scenario string `json:"scenario"`
	// Binding: "early" (at arrival), "late" (--queue) or "late-at-free"
	// (--queue without granting ahead: only once a slot is free).
	Binding string `json:"binding"`
	// MakespanS: from the burst's first send to its last answer.
	MakespanS float64 `json:"makespan_s,omitempty"`
	// Probe are the latencies (s) of the scenario's own requests (the
	// priority requests, the second tenant's).
	Probe []float64 `json:"probe_s,omitempty"`
	// QuarterS: when a quarter of the burst had been answered.
	QuarterS float64 `json:"quarter_s,omitempty"`
	// ProbeLastS: when the last probe request was answered.
	ProbeLastS float64 `json:"probe_last_s,omitempty"`
	// Abandoned: generations the workers started after their client left.
	Abandoned int `json:"abandoned,omitempty"`
	// UpdateS: how long a drain-mode weight update asked mid-burst took;
	// WrongVersion counts answers whose x-weight-version names weights
	// that did not make them.
	UpdateS      float64 `json:"update_s,omitempty"`
	WrongVersion int     `json:"wrong_version"`
	// Served, Refused (429) and Lost (neither) requests of the burst; the
	// most seen waiting in the router's queue; the slowest refusal (s).
	Served      int     `json:"served"`
	Refused     int     `json:"refused,omitempty"`
	Lost        int     `json:"lost"`
	MaxWaiting  int     `json:"max_waiting,omitempty"`
	SlowRefusal float64 `json:"slowest_refusal_s,omitempty"`
	// Depth is the waiting over time: in the router's queue and in the
	// workers' own (every 50 ms from the burst's start).
	Depth []DepthSample `json:"depth,omitempty"`
	// Resources: what the router holds before, during and after the
	// burst (burst-resources).
	Resources []ResourceSample `json:"resources,omitempty"`
	// Video scenarios: the creates' latencies (s; p50, p99, max), how
	// many jobs the router held, and jobs a worker was given more than
	// once (by the workers' own job lists).
	CreateP50S float64 `json:"create_p50_s,omitempty"`
	CreateP99S float64 `json:"create_p99_s,omitempty"`
	CreateMaxS float64 `json:"create_max_s,omitempty"`
	Held       int     `json:"held,omitempty"`
	RunTwice   int     `json:"run_twice"`
}

// DepthSample is where requests wait at one time.
type DepthSample struct {
	T       float64 `json:"t_s"`
	Router  int     `json:"router"`
	Workers int     `json:"workers"`
}

// RunQueue runs every scenario with both bindings.
func RunQueue(ctx context.Context, qc QueueConfig) ([]QueueScenario, error) {
	var out []QueueScenario
	both := []string{"early", "late"}
	for _, sc := range []struct {
		name     string
		run      func(context.Context, *queueLab) (QueueScenario, error)
		bindings []string
		task     string // the workers' task type ("": images)
	}{
		{"plain", plainBurst, []string{"early", "late", "late-at-free"}, ""},
		{"slow-worker", slowWorker, both, ""},
		{"priority", priorityProbe, both, ""},
		{"second-tenant", secondTenant, both, ""},
		{"disconnects", disconnects, both, ""},
		{"drain-update", drainUpdate, both, ""},
		{"burst-resources", burstResources, []string{"late"}, ""},
		{"self-named", selfNamed, []string{"late", "late-trusted"}, ""},
		{"videos", videoBurst(false), both, "T2V"},
		{"videos-slow-worker", videoBurst(true), both, "T2V"},
	} {
		if !qc.runs(sc.name) {
			continue
		}
		for _, binding := range sc.bindings {
			lab, err := newQueueLab(qc, binding, nil, sc.task)
			if err != nil {
				return out, err
			}
			res, err := sc.run(ctx, lab)
			lab.close()
			if err != nil {
				return out, fmt.Errorf("%s, %s binding: %w", sc.name, binding, err)
			}
			res.Scenario, res.Binding = sc.name, binding
			qc.logf("%-13s %-5s %s", sc.name, binding, res.summary())
			out = append(out, res)
		}
	}
	if !qc.runs("max-queued-50") {
		return out, nil
	}
	lab, err := newQueueLab(qc, "late", []string{"--max-queued", "50"}, "")
	if err != nil {
		return out, err
	}
	res, err := maxQueued(ctx, lab)
	lab.close()
	if err != nil {
		return out, fmt.Errorf("max-queued: %w", err)
	}
	res.Scenario, res.Binding = "max-queued-50", "late"
	qc.logf("%-13s %-5s %s", res.Scenario, res.Binding, res.summary())
	return append(out, res), nil
}

func (qc QueueConfig) runs(scenario string) bool {
	return len(qc.Scenarios) == 0 || slices.Contains(qc.Scenarios, scenario)
}

func (qc QueueConfig) logf(format string, a ...any) {
	if qc.Log != nil {
		fmt.Fprintf(qc.Log, format+"\n", a...)
	}
}

func (r QueueScenario) summary() string {
	if r.CreateP99S > 0 {
		return fmt.Sprintf("makespan %.2fs creates p50 %.3fs p99 %.3fs max %.3fs held %d completed %d lost %d run-twice %d",
			r.MakespanS, r.CreateP50S, r.CreateP99S, r.CreateMaxS, r.Held, r.Served, r.Lost, r.RunTwice)
	}
	if len(r.Resources) > 0 {
		var b strings.Builder
		fmt.Fprintf(&b, "makespan %.2fs served %d lost %d max-waiting %d;", r.MakespanS, r.Served, r.Lost, r.MaxWaiting)
		for _, s := range r.Resources {
			fmt.Fprintf(&b, " %s: %d goroutines, %.0f MB control plane, %.0f MB Envoy, %d API connections;", s.Phase, s.Goroutines, s.ControlMB, s.EnvoyMB, s.APIConns)
		}
		return b.String()
	}
	return fmt.Sprintf("makespan %.2fs quarter %.2fs probes %v last probe %.2fs abandoned %d update %.2fs wrong-version %d served %d refused %d lost %d max-waiting %d",
		r.MakespanS, r.QuarterS, roundAll(r.Probe), r.ProbeLastS, r.Abandoned, r.UpdateS, r.WrongVersion, r.Served, r.Refused, r.Lost, r.MaxWaiting)
}

func roundAll(v []float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(int(x*100+0.5)) / 100
	}
	return out
}

// queueLab is one router and its fleet.
type queueLab struct {
	qc      QueueConfig
	router  *Router
	workers []string
	stop    func()
	client  *http.Client
}

func newQueueLab(qc QueueConfig, binding string, extra []string, task string) (*queueLab, error) {
	cfg := fakeworker.DefaultConfig()
	cfg.TimeScale, cfg.Base, cfg.PerStep, cfg.Jitter, cfg.UpdateTime = 1, qc.Service, 0, 0, 4*qc.Service
	if task != "" {
		cfg.TaskType, cfg.Base = task, qc.VideoTime
	}
	urls, stop, err := Workers(qc.Workers, cfg)
	if err != nil {
		return nil, err
	}
	args := []string{"--worker-urls", strings.Join(urls, ","), "--health-check-interval", "30", "--envoy-concurrency", "2"}
	switch binding {
	case "early":
		args = append(args, "--queue=false")
	case "late":
		args = append(args, "--queue")
	case "late-at-free":
		args = append(args, "--queue", "--queue-grant-ahead", "0")
	case "late-trusted":
		args = append(args, "--queue", "--trust-body-user")
	}
	r, err := StartRouter(qc.RouterBin, nil, append(args, extra...)...)
	if err != nil {
		stop()
		return nil, err
	}
	if err := waitHealthy(context.Background(), r.Front, len(urls)); err != nil {
		r.Stop()
		stop()
		return nil, err
	}
	return &queueLab{qc: qc, router: r, workers: urls, stop: stop,
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 512, MaxConnsPerHost: 0}}}, nil
}

func (l *queueLab) close() {
	l.router.Stop()
	l.stop()
}

// answer is one request's outcome.
type answer struct {
	status  int
	version string
	model   string
	start   time.Time
	end     time.Time
	err     error
}

func (l *queueLab) send(ctx context.Context, headers map[string]string) answer {
	return l.sendBody(ctx, `{"prompt":"q","size":"256x256"}`, headers)
}

func (l *queueLab) sendBody(ctx context.Context, body string, headers map[string]string) answer {
	a := answer{start: time.Now()}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.router.Front+wire.PathImages, strings.NewReader(body))
	if err != nil {
		a.err = err
		return a
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := l.client.Do(req)
	if err != nil {
		a.err, a.end = err, time.Now()
		return a
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	a.status, a.end = resp.StatusCode, time.Now()
	a.version, a.model = resp.Header.Get(wire.HeaderWeightVersion), resp.Header.Get("X-Model-Path")
	return a
}

// burst sends n requests at once; the answers arrive on the returned
// channel's close as a slice.
func (l *queueLab) burst(ctx context.Context, n int, headers map[string]string) <-chan []answer {
	out := make(chan []answer, 1)
	go func() {
		res := make([]answer, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() { defer wg.Done(); res[i] = l.send(ctx, headers) }()
		}
		wg.Wait()
		out <- res
	}()
	return out
}

// sampleDepth records where requests wait every 50 ms until stop closes.
func (l *queueLab) sampleDepth(start time.Time, stop <-chan struct{}) <-chan []DepthSample {
	out := make(chan []DepthSample, 1)
	go func() {
		var s []DepthSample
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				out <- s
				return
			case <-t.C:
			}
			d := DepthSample{T: time.Since(start).Seconds(), Router: l.routerWaiting()}
			for _, w := range l.workers {
				d.Workers += max(l.workerStats(w).QueueDepth-1, 0)
			}
			s = append(s, d)
		}
	}()
	return out
}

func (l *queueLab) routerWaiting() int {
	var st struct {
		Waiting int `json:"waiting"`
	}
	if getJSON(l.client, l.router.API+wire.PathQueueStatus, &st) != nil {
		return 0
	}
	return st.Waiting
}

type fakeStats struct {
	QueueDepth int `json:"queue_depth"`
	Abandoned  int `json:"started_after_client_gone"`
}

func (l *queueLab) workerStats(url string) fakeStats {
	var st fakeStats
	_ = getJSON(l.client, url+"/stats", &st)
	return st
}

func getJSON(c *http.Client, url string, v any) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

func (l *queueLab) post(url, body string) error {
	resp, err := l.client.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %d %s", url, resp.StatusCode, b)
	}
	return nil
}

// finish records a burst's makespan and how its requests ended.
func (r *QueueScenario) finish(start time.Time, as []answer) {
	r.MakespanS = makespan(start, as)
	tally(r, as)
}

// tally fills served, refused and lost from a burst's answers.
func tally(r *QueueScenario, as []answer) {
	for _, a := range as {
		switch {
		case a.err == nil && a.status == http.StatusOK:
			r.Served++
		case a.err == nil && a.status == http.StatusTooManyRequests:
			r.Refused++
			r.SlowRefusal = max(r.SlowRefusal, a.end.Sub(a.start).Seconds())
		default:
			r.Lost++
		}
	}
}

func makespan(start time.Time, as []answer) float64 {
	var last time.Time
	for _, a := range as {
		if a.end.After(last) {
			last = a.end
		}
	}
	return last.Sub(start).Seconds()
}

// slowWorker: one worker turns 3x slower one second into the burst.
// plainBurst: a burst on an equal, steady fleet, which every worker is
// busy with until the end: what late binding costs when nothing goes wrong.
func plainBurst(ctx context.Context, l *queueLab) (QueueScenario, error) {
	var r QueueScenario
	start := time.Now()
	as := <-l.burst(ctx, l.qc.Burst, nil)
	r.finish(start, as)
	return r, nil
}

func slowWorker(ctx context.Context, l *queueLab) (QueueScenario, error) {
	var r QueueScenario
	start := time.Now()
	stopDepth := make(chan struct{})
	depth := l.sampleDepth(start, stopDepth)
	done := l.burst(ctx, l.qc.Burst, nil)
	select {
	case <-time.After(time.Second):
	case <-ctx.Done():
		return r, ctx.Err()
	}
	if err := l.post(l.workers[0]+"/_fake/faults", `{"slowdown":3}`); err != nil {
		return r, err
	}
	as := <-done
	close(stopDepth)
	r.Depth = <-depth
	r.finish(start, as)
	return r, nil
}

// priorityProbe: five priority requests sent one second into the burst.
func priorityProbe(ctx context.Context, l *queueLab) (QueueScenario, error) {
	var r QueueScenario
	start := time.Now()
	done := l.burst(ctx, l.qc.Burst, nil)
	time.Sleep(time.Second) // the burst is waiting by now; the probes go in
	probes := l.burst(ctx, 5, map[string]string{wire.HeaderPriority: "10"})
	for _, a := range <-probes {
		if a.err != nil || a.status != http.StatusOK {
			return r, fmt.Errorf("priority request: %d %v", a.status, a.err)
		}
		r.Probe = append(r.Probe, a.end.Sub(a.start).Seconds())
	}
	as := <-done
	r.finish(start, as)
	return r, nil
}

// secondTenant: another tenant's 8 requests half a second into a burst.
func secondTenant(ctx context.Context, l *queueLab) (QueueScenario, error) {
	var r QueueScenario
	start := time.Now()
	done := l.burst(ctx, l.qc.Burst, map[string]string{wire.HeaderTenant: "trainer"})
	time.Sleep(500 * time.Millisecond)
	last, err := r.probes(<-l.burst(ctx, 8, map[string]string{wire.HeaderTenant: "eval"}), "second tenant's request")
	if err != nil {
		return r, err
	}
	as := <-done
	ends := make([]time.Time, 0, len(as))
	for _, a := range as {
		ends = append(ends, a.end)
	}
	slices.SortFunc(ends, func(a, b time.Time) int { return a.Compare(b) })
	r.QuarterS = ends[len(ends)/4].Sub(start).Seconds()
	r.ProbeLastS = last.Sub(start).Seconds()
	r.finish(start, as)
	return r, nil
}

// selfNamed: a burst whose every request names a new tenant in the body's
// "user", and half a second in another tenant's 8 requests named by
// header (issue 34: by default the body names no tenant; trusted, names
// over --max-tenants share one lane).
func selfNamed(ctx context.Context, l *queueLab) (QueueScenario, error) {
	var r QueueScenario
	start := time.Now()
	crowd := make(chan []answer, 1)
	go func() {
		res := make([]answer, l.qc.Burst)
		var wg sync.WaitGroup
		for i := range l.qc.Burst {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res[i] = l.sendBody(ctx, fmt.Sprintf(`{"prompt":"q","size":"256x256","user":"crowd-%d"}`, i), nil)
			}()
		}
		wg.Wait()
		crowd <- res
	}()
	time.Sleep(500 * time.Millisecond)
	last, err := r.probes(<-l.burst(ctx, 8, map[string]string{wire.HeaderTenant: "eval"}), "the header-named tenant's request")
	if err != nil {
		return r, err
	}
	as := <-crowd
	r.ProbeLastS = last.Sub(start).Seconds()
	r.finish(start, as)
	return r, nil
}

// probes records the probe requests' latencies and returns when the last
// was answered; a probe that failed is an error.
func (r *QueueScenario) probes(as []answer, what string) (time.Time, error) {
	var last time.Time
	for _, a := range as {
		if a.err != nil || a.status != http.StatusOK {
			return last, fmt.Errorf("%s: %d %v", what, a.status, a.err)
		}
		r.Probe = append(r.Probe, a.end.Sub(a.start).Seconds())
		if a.end.After(last) {
			last = a.end
		}
	}
	return last, nil
}

// disconnects: 100 requests queued behind a running burst give up.
func disconnects(ctx context.Context, l *queueLab) (QueueScenario, error) {
	var r QueueScenario
	start := time.Now()
	busy := l.burst(ctx, 2*l.qc.Workers, nil) // every worker busy for two service times
	time.Sleep(l.qc.Service / 2)
	gctx, cancel := context.WithTimeout(ctx, l.qc.Service)
	gone := l.burst(gctx, 100, nil)
	<-gone
	cancel()
	as := <-busy
	// Let whatever reached the workers run: four times the time they
	// could take.
	time.Sleep(time.Duration(100/l.qc.Workers+2) * l.qc.Service)
	for _, w := range l.workers {
		r.Abandoned += l.workerStats(w).Abandoned
	}
	r.finish(start, as)
	return r, nil
}

// drainUpdate: a drain-mode weight update asked one second into a burst.
func drainUpdate(ctx context.Context, l *queueLab) (QueueScenario, error) {
	var r QueueScenario
	start := time.Now()
	done := l.burst(ctx, l.qc.Burst, nil)
	time.Sleep(time.Second)
	t0 := time.Now()
	if err := l.post(l.router.Front+"/update_weights_from_disk", `{"model_path":"/ckpt/new","mode":"drain","weight_version":"v-new"}`); err != nil {
		return r, err
	}
	r.UpdateS = time.Since(t0).Seconds()
	as := <-done
	for _, a := range as {
		if a.err == nil && a.status == http.StatusOK && (a.version == "v-new") != (a.model == "/ckpt/new") {
			r.WrongVersion++
		}
	}
	r.finish(start, as)
	return r, nil
}

// maxQueued: a burst of Burst on a queue that holds 50.
func maxQueued(ctx context.Context, l *queueLab) (QueueScenario, error) {
	var r QueueScenario
	start := time.Now()
	var maxSeen atomic.Int64
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if n := int64(l.routerWaiting()); n > maxSeen.Load() {
				maxSeen.Store(n)
			}
		}
	}()
	as := <-l.burst(ctx, l.qc.Burst, nil)
	close(stop)
	r.MaxWaiting = int(maxSeen.Load())
	r.finish(start, as)
	return r, nil
}

// QueuePlot draws where the slow-worker scenario's requests waited over
// time: in the workers' own queues with early binding, in the router's
// queue and the workers' with late binding.
func QueuePlot(rows []QueueScenario, path string) error {
	p := plot.New()
	p.Title.Text = "Where a burst waits: one worker of 4 turns 3x slower at 1 s"
	p.X.Label.Text = "seconds since the burst"
	p.Y.Label.Text = "requests waiting"
	p.Legend.Top = true
	i := 0
	for _, r := range rows {
		if r.Scenario != "slow-worker" {
			continue
		}
		series := []struct {
			name string
			y    func(DepthSample) int
		}{{r.Binding + " binding: in the workers", func(d DepthSample) int { return d.Workers }}}
		if r.Binding == "late" {
			series = append(series, struct {
				name string
				y    func(DepthSample) int
			}{"late binding: in the router", func(d DepthSample) int { return d.Router }})
		}
		for _, s := range series {
			pts := make(plotter.XYs, len(r.Depth))
			for j, d := range r.Depth {
				pts[j].X, pts[j].Y = d.T, float64(s.y(d))
			}
			l, err := plotter.NewLine(pts)
			if err != nil {
				return err
			}
			l.Color = plotutil.Color(i)
			l.Width = vg.Points(1.5)
			p.Add(l)
			p.Legend.Add(s.name, l)
			i++
		}
	}
	return p.Save(7*vg.Inch, 4.5*vg.Inch, path)
}
