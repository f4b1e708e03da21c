package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

// Shape is one kind of request in a mixed workload.
type Shape struct {
	Weight        float64
	Width, Height int
	Steps         int
	Frames        int // videos only
}

// ParseMix reads a weighted list "weight:WxH:steps[:frames],...", for
// example "3:512x512:4,1:1024x1024:50".
func ParseMix(s string) ([]Shape, error) {
	var out []Shape
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		parts := strings.Split(item, ":")
		if len(parts) != 3 && len(parts) != 4 {
			return nil, fmt.Errorf("request mix item %q: want weight:WxH:steps[:frames]", item)
		}
		w, err := strconv.ParseFloat(parts[0], 64)
		if err != nil || w <= 0 || math.IsInf(w, 0) {
			return nil, fmt.Errorf("request mix item %q: weight must be a positive number", item)
		}
		ws, hs, ok := strings.Cut(parts[1], "x")
		width, err1 := strconv.Atoi(ws)
		height, err2 := strconv.Atoi(hs)
		if !ok || err1 != nil || err2 != nil || width < 16 || height < 16 || width > 8192 || height > 8192 {
			return nil, fmt.Errorf("request mix item %q: size must be WxH within 16..8192", item)
		}
		steps, err := strconv.Atoi(parts[2])
		if err != nil || steps < 1 || steps > 1000 {
			return nil, fmt.Errorf("request mix item %q: steps must be 1..1000", item)
		}
		frames := 1
		if len(parts) == 4 {
			if frames, err = strconv.Atoi(parts[3]); err != nil || frames < 1 || frames > 1024 {
				return nil, fmt.Errorf("request mix item %q: frames must be 1..1024", item)
			}
		}
		out = append(out, Shape{Weight: w, Width: width, Height: height, Steps: steps, Frames: frames})
	}
	if len(out) == 0 {
		return nil, errors.New("request mix is empty")
	}
	return out, nil
}

// Config is one benchmark run.
type Config struct {
	// Targets are base URLs; requests go round-robin over them (one: the
	// router; several: the no-router baseline, spread by the client).
	Targets []string
	// Task is "text-to-image" or "text-to-video".
	Task       string
	NumPrompts int
	// MaxConcurrency bounds requests in flight (closed loop when RequestRate
	// is 0).
	MaxConcurrency int
	// RequestRate is the Poisson arrival rate per second; 0 sends as fast as
	// MaxConcurrency allows.
	RequestRate float64
	Mix         []Shape
	Seed        uint64
	Timeout     time.Duration
	// Progress, if set, gets a progress bar.
	Progress io.Writer
	Client   *http.Client
}

// Validate checks a configuration.
func (c Config) Validate() error {
	switch {
	case len(c.Targets) == 0:
		return errors.New("no target URL")
	case c.Task != "text-to-image" && c.Task != "text-to-video":
		return fmt.Errorf("task %q: want text-to-image or text-to-video", c.Task)
	case c.NumPrompts < 1:
		return errors.New("num-prompts must be at least 1")
	case c.MaxConcurrency < 1 && c.RequestRate <= 0:
		return errors.New("give --max-concurrency or --request-rate")
	case c.RequestRate < 0 || math.IsNaN(c.RequestRate):
		return errors.New("request-rate must not be negative")
	case len(c.Mix) == 0:
		return errors.New("request mix is empty")
	}
	return nil
}

// Run sends the workload and returns every request's result and the
// wall-clock duration. It stops early, counting the rest as failed, if ctx
// ends.
func Run(ctx context.Context, c Config) ([]Result, time.Duration, error) {
	if err := c.Validate(); err != nil {
		return nil, 0, err
	}
	client := c.Client
	if client == nil {
		client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: max(c.MaxConcurrency, 64)}}
	}
	rng := rand.New(rand.NewPCG(c.Seed, c.Seed^0x5bd1e995))
	shapes := make([]Shape, c.NumPrompts)
	var total float64
	for _, s := range c.Mix {
		total += s.Weight
	}
	for i := range shapes {
		x := rng.Float64() * total
		for _, s := range c.Mix {
			if x -= s.Weight; x < 0 {
				shapes[i] = s
				break
			}
		}
		if shapes[i].Steps == 0 {
			shapes[i] = c.Mix[len(c.Mix)-1]
		}
	}
	results := make([]Result, c.NumPrompts)
	limit := c.MaxConcurrency
	if limit < 1 {
		limit = c.NumPrompts
	}
	sem := make(chan struct{}, limit)
	var done atomic.Int64
	stopBar := c.progress(&done)
	var wg sync.WaitGroup
	start := time.Now()
	next := start
	for i := range c.NumPrompts {
		if c.RequestRate > 0 {
			next = next.Add(time.Duration(rng.ExpFloat64() / c.RequestRate * float64(time.Second)))
			select {
			case <-ctx.Done():
			case <-time.After(time.Until(next)):
			}
		}
		select {
		case <-ctx.Done():
		case sem <- struct{}{}:
		}
		if ctx.Err() != nil {
			results[i] = Result{Err: ctx.Err().Error()}
			done.Add(1)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			target := c.Targets[i%len(c.Targets)]
			results[i] = c.one(ctx, client, target, shapes[i], i)
			done.Add(1)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopBar()
	return results, elapsed, nil
}

// one sends one request (and, for videos, polls the job to the end).
func (c Config) one(ctx context.Context, client *http.Client, base string, s Shape, i int) Result {
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	body := map[string]any{"prompt": fmt.Sprintf("benchmark prompt %d", i), "size": fmt.Sprintf("%dx%d", s.Width, s.Height),
		"num_inference_steps": s.Steps, "seed": i}
	path := "/v1/images/generations"
	if c.Task == "text-to-video" {
		path = "/v1/videos"
		body["num_frames"] = s.Frames
	} else {
		body["response_format"] = "b64_json"
		body["n"] = 1
	}
	start := time.Now()
	res := Result{Start: start}
	status, hdr, raw, err := post(ctx, client, base+path, body)
	if err != nil || status != 200 {
		res.Err = describe(status, raw, err)
		return res
	}
	// Through the router the worker names itself in x-diffusion-worker;
	// without a router the target is the worker.
	res.Worker = hdr.Get(wire.HeaderWorker)
	if res.Worker == "" {
		res.Worker = base
	}
	if c.Task == "text-to-video" {
		if err := pollVideo(ctx, client, base, raw); err != nil {
			res.Err = err.Error()
			return res
		}
	}
	res.Latency, res.OK = time.Since(start), true
	return res
}

func post(ctx context.Context, client *http.Client, url string, body any) (int, http.Header, []byte, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return 0, nil, nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, raw, err
}

func describe(status int, body []byte, err error) string {
	if err != nil {
		return err.Error()
	}
	if len(body) > 200 {
		body = body[:200]
	}
	return fmt.Sprintf("status %d: %s", status, body)
}

// pollVideo follows a created job until it completes or fails.
func pollVideo(ctx context.Context, client *http.Client, base string, created []byte) error {
	var job struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(created, &job); err != nil || job.ID == "" {
		return fmt.Errorf("video create answer has no id: %.200s", created)
	}
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 500*time.Millisecond) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/videos/"+job.ID, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		var st struct {
			Status string `json:"status"`
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			return fmt.Errorf("poll %s: status %d: %v", job.ID, resp.StatusCode, err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed":
			return fmt.Errorf("video %s failed", job.ID)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}

// progress draws a bar on c.Progress until the returned stop is called.
func (c Config) progress(done *atomic.Int64) func() {
	if c.Progress == nil {
		return func() {}
	}
	stop := make(chan struct{})
	finished := make(chan struct{})
	draw := func() {
		n := int(done.Load())
		const width = 40
		filled := width * n / c.NumPrompts
		fmt.Fprintf(c.Progress, "\r[%s%s] %d/%d", strings.Repeat("#", filled), strings.Repeat(" ", width-filled), n, c.NumPrompts)
	}
	go func() {
		defer close(finished)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				draw()
				fmt.Fprintln(c.Progress)
				return
			case <-t.C:
				draw()
			}
		}
	}()
	return func() { close(stop); <-finished }
}
