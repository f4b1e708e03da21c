package fakeworker

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestServiceTime(t *testing.T) {
	c := DefaultConfig()
	tests := []struct {
		name                            string
		steps, width, height, frames, n int
		want                            time.Duration
	}{
		{"FLUX.1-dev at 1024^2, 50 steps", 50, 1024, 1024, 1, 1, 300*time.Millisecond + 50*139*time.Millisecond},
		{"a quarter of the pixels", 50, 512, 512, 1, 1, 300*time.Millisecond + 50*139*time.Millisecond/4},
		{"frames multiply", 10, 1024, 1024, 4, 1, 300*time.Millisecond + 40*139*time.Millisecond},
		{"n images multiply", 10, 1024, 1024, 1, 2, 300*time.Millisecond + 20*139*time.Millisecond},
	}
	for _, tt := range tests {
		if got := c.ServiceTime(tt.steps, tt.width, tt.height, tt.frames, tt.n); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
	c.TimeScale = 0.001
	if got := c.ServiceTime(50, 1024, 1024, 1, 1); got != (300*time.Millisecond+50*139*time.Millisecond)/1000 {
		t.Errorf("scaled: %v", got)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, mutate := range []func(*Config){
		func(c *Config) { c.TaskType = "T2X" },
		func(c *Config) { c.Jitter = 1 },
		func(c *Config) { c.FailRate = 2 },
		func(c *Config) { c.DefaultSteps = 0 },
		func(c *Config) { c.TimeScale = -1 },
		func(c *Config) { c.ModelPath = "" },
	} {
		c := DefaultConfig()
		mutate(&c)
		if c.Validate() == nil {
			t.Errorf("accepted %+v", c)
		}
	}
}

func newTestWorker(t *testing.T, mutate func(*Config)) *httptest.Server {
	t.Helper()
	c := DefaultConfig()
	c.WorkerID, c.TimeScale, c.Jitter = "w1", 0.001, 0
	if mutate != nil {
		mutate(&c)
	}
	s, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go s.Run(ctx)
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(func() { srv.Close(); cancel() })
	return srv
}

func post(t *testing.T, url, body string) (int, map[string]any, http.Header) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&v)
	return resp.StatusCode, v, resp.Header
}

func TestImageValidation(t *testing.T) {
	srv := newTestWorker(t, nil)
	tests := []struct {
		body string
		want int
	}{
		{`{"prompt":"a cat"}`, 200},
		{`{"prompt":"a cat","size":"512x768","n":2,"response_format":"b64_json"}`, 200},
		{`{}`, 422},
		{`{"prompt":""}`, 422},
		{`not json`, 422},
		{`{"prompt":"x","n":11}`, 422},
		{`{"prompt":"x","n":1.5}`, 422},
		{`{"prompt":"x","size":"big"}`, 422},
		{`{"prompt":"x","response_format":"png"}`, 400},
		{`{"prompt":"x","guidance_scale":"high"}`, 422},
	}
	for _, tt := range tests {
		code, v, h := post(t, srv.URL+"/v1/images/generations", tt.body)
		if code != tt.want {
			t.Errorf("%s = %d %v, want %d", tt.body, code, v, tt.want)
		}
		if h.Get("X-Worker-Id") != "w1" {
			t.Errorf("%s: response does not name the worker", tt.body)
		}
	}
}

// TestFIFOOneAtATime: concurrent requests are served one after another, so
// the last one waits for all the others.
func TestFIFOOneAtATime(t *testing.T) {
	srv := newTestWorker(t, func(c *Config) { c.TimeScale = 0.01 }) // ~20 ms per 10-step request
	var wg sync.WaitGroup
	start := time.Now()
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, v, _ := post(t, srv.URL+"/v1/images/generations", `{"prompt":"x","num_inference_steps":10}`); code != 200 {
				t.Errorf("status %d %v", code, v)
			}
		}()
	}
	wg.Wait()
	one := DefaultConfig()
	one.TimeScale = 0.01
	if elapsed, serial := time.Since(start), 5*one.ServiceTime(10, 1024, 1024, 1, 1); elapsed < serial {
		t.Fatalf("5 requests took %v, less than 5 service times (%v): not serialised", elapsed, serial)
	}
	resp, err := http.Get(srv.URL + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s Stats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	if s.ServedTotal != 5 || s.MaxQueueDepth < 2 || s.WaitTotalSecs <= 0 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestVideoJobLifecycle(t *testing.T) {
	srv := newTestWorker(t, func(c *Config) { c.TaskType = "T2V" })
	code, v, _ := post(t, srv.URL+"/v1/videos", `{"prompt":"waves","num_inference_steps":2}`)
	if code != 200 || v["status"] != "queued" || v["object"] != "video" {
		t.Fatalf("create = %d %v", code, v)
	}
	id := v["id"].(string)
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get(srv.URL + "/v1/videos/" + id)
		if err != nil {
			t.Fatal(err)
		}
		var job map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&job)
		resp.Body.Close()
		if job["status"] == "completed" {
			// The fields bench_serving.py reads to count outputs.
			if job["num_outputs"] != 1.0 || job["file_path"] == nil || job["url"] != "/v1/videos/"+id+"/content" || job["completed_at"] == nil {
				t.Fatalf("completed job lacks sglang's fields: %v", job)
			}
			break
		}
		if job["file_path"] != nil || job["num_outputs"] != 0.0 {
			t.Fatalf("unfinished job claims outputs: %v", job)
		}
		if time.Now().After(deadline) {
			t.Fatalf("job still %v", job["status"])
		}
		time.Sleep(5 * time.Millisecond)
	}
	resp, err := http.Get(srv.URL + "/v1/videos/" + id + "/content")
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "video/mp4" {
		t.Fatalf("content: %v %v", err, resp)
	}
	resp.Body.Close()
	image := newTestWorker(t, nil)
	if code, _, _ := post(t, image.URL+"/v1/videos", `{"prompt":"x"}`); code != 400 {
		t.Fatalf("image worker accepted a video: %d", code)
	}
}

func TestWeightsAndSleep(t *testing.T) {
	srv := newTestWorker(t, nil)
	if code, v, _ := post(t, srv.URL+"/update_weights_from_disk", `{}`); code != 400 || v["success"] != false {
		t.Fatalf("missing model_path = %d %v", code, v)
	}
	code, v, _ := post(t, srv.URL+"/update_weights_from_disk", `{"model_path":"/ckpt/step-2"}`)
	if code != 200 || v["success"] != true {
		t.Fatalf("update = %d %v", code, v)
	}
	_, img, h := post(t, srv.URL+"/v1/images/generations", `{"prompt":"x"}`)
	if img["model"] != "/ckpt/step-2" || h.Get("X-Model-Path") != "/ckpt/step-2" {
		t.Fatalf("generation after update names %v / %q", img["model"], h.Get("X-Model-Path"))
	}
	post(t, srv.URL+"/release_memory_occupation", `{}`)
	if code, _, _ := post(t, srv.URL+"/v1/images/generations", `{"prompt":"x"}`); code != 503 {
		t.Fatalf("sleeping worker generated: %d", code)
	}
	if code, v, _ := post(t, srv.URL+"/update_weights_from_disk", `{"model_path":"/x"}`); code != 400 || v["success"] != false {
		t.Fatalf("update while asleep = %d %v", code, v)
	}
	post(t, srv.URL+"/resume_memory_occupation", `{}`)
	if code, _, _ := post(t, srv.URL+"/v1/images/generations", `{"prompt":"x"}`); code != 200 {
		t.Fatalf("woken worker = %d", code)
	}
}

func TestFaults(t *testing.T) {
	srv := newTestWorker(t, func(c *Config) { c.FailRate = 1 })
	if code, _, _ := post(t, srv.URL+"/v1/images/generations", `{"prompt":"x"}`); code != 500 {
		t.Fatalf("fail-rate 1 answered %d", code)
	}
	if code, _, _ := post(t, srv.URL+"/_fake/faults", `{"fail_rate": 0}`); code != 200 {
		t.Fatal("cannot clear faults")
	}
	if code, _, _ := post(t, srv.URL+"/v1/images/generations", `{"prompt":"x"}`); code != 200 {
		t.Fatalf("after clearing = %d", code)
	}
	if code, _, _ := post(t, srv.URL+"/_fake/faults", `{"fail_rate": 3}`); code != 400 {
		t.Fatal("accepted fail_rate 3")
	}
	if code, _, _ := post(t, srv.URL+"/_fake/faults", `{"fial_rate": 1}`); code != 400 {
		t.Fatal("accepted an unknown field")
	}
	if code, _, _ := post(t, srv.URL+"/_fake/faults", `{"slowdown": -1}`); code != 400 {
		t.Fatal("accepted a negative slowdown")
	}
	if code, _, _ := post(t, srv.URL+"/_fake/faults", `{"reset_rate": 1.5}`); code != 400 {
		t.Fatal("accepted reset_rate 1.5")
	}
	// A reset closes the connection with no answer, for images and video
	// creates alike, and is counted.
	vid := newTestWorker(t, func(c *Config) { c.TaskType = "T2V" })
	for _, c := range []struct{ base, path string }{{srv.URL, "/v1/images/generations"}, {vid.URL, "/v1/videos"}} {
		if code, _, _ := post(t, c.base+"/_fake/faults", `{"reset_rate": 1}`); code != 200 {
			t.Fatal("cannot set reset_rate")
		}
		resp, err := http.Post(c.base+c.path, "application/json", strings.NewReader(`{"prompt":"x"}`))
		if err == nil {
			resp.Body.Close()
			t.Fatalf("%s with reset_rate 1 answered %d", c.path, resp.StatusCode)
		}
		r, err := http.Get(c.base + "/stats")
		if err != nil {
			t.Fatal(err)
		}
		var st Stats
		err = json.NewDecoder(r.Body).Decode(&st)
		r.Body.Close()
		if err != nil || st.Resets != 1 {
			t.Fatalf("%s: stats after one reset: %+v (%v)", c.path, st, err)
		}
	}
}

// TestSlowdown: a run-time slowdown stretches the service time of the
// requests that follow (a throttling GPU), and clearing it restores speed.
func TestSlowdown(t *testing.T) {
	// A service time of about 100 ms: a loaded machine's delays are small
	// beside the 300 ms a 4x slowdown adds.
	srv := newTestWorker(t, func(c *Config) { c.TimeScale, c.Jitter = 0.1, 0 })
	one := DefaultConfig()
	one.TimeScale = 0.1
	service := one.ServiceTime(5, 1024, 1024, 1, 1)
	timed := func() time.Duration {
		start := time.Now()
		if code, v, _ := post(t, srv.URL+"/v1/images/generations", `{"prompt":"x","num_inference_steps":5}`); code != 200 {
			t.Fatalf("status %d %v", code, v)
		}
		return time.Since(start)
	}
	if code, _, _ := post(t, srv.URL+"/_fake/faults", `{"slowdown": 4}`); code != 200 {
		t.Fatal("cannot set slowdown")
	}
	slowed := timed()
	if slowed < 4*service {
		t.Fatalf("slowed request took %v, want at least %v", slowed, 4*service)
	}
	if code, _, _ := post(t, srv.URL+"/_fake/faults", `{"slowdown": 1}`); code != 200 {
		t.Fatal("cannot clear slowdown")
	}
	// Cleared, a request saves about three service times; two is the
	// margin (both requests' own delays would have to differ by one).
	if d := timed(); d > slowed-2*service {
		t.Fatalf("request after clearing took %v, the slowed one %v: want at least %v less", d, slowed, 2*service)
	}
}

func TestImageVariants(t *testing.T) {
	srv := newTestWorker(t, nil)
	code, v, _ := post(t, srv.URL+"/v1/images/generations", `{"prompt":"two","n":2,"num_inference_steps":1,"seed":7}`)
	if code != 200 {
		t.Fatalf("generate = %d %v", code, v)
	}
	data := v["data"].([]any)
	seen := map[string]bool{}
	for i, d := range data {
		url := d.(map[string]any)["url"].(string)
		if want := "?variant=" + strconv.Itoa(i); !strings.HasSuffix(url, "/content"+want) {
			t.Fatalf("image %d url %q lacks %s", i, url, want)
		}
		resp, err := http.Get(srv.URL + url)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %v %v", url, err, resp)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		seen[string(b)] = true
	}
	if len(seen) != 2 {
		t.Fatalf("the two variants served %d distinct images", len(seen))
	}
	resp, err := http.Get(srv.URL + data[0].(map[string]any)["url"].(string)[:len("/v1/images/")+len(v["id"].(string))] + "/content?variant=x")
	if err != nil || resp.StatusCode != 422 {
		t.Fatalf("bad variant: %v %v", err, resp)
	}
	resp.Body.Close()
}

func TestWrongMethodIs405(t *testing.T) {
	srv := newTestWorker(t, nil)
	for _, tt := range []struct {
		method, path string
		want         int
	}{
		{"POST", "/v1/models", 405}, {"GET", "/v1/images/generations", 405}, {"PUT", "/v1/videos/x", 405},
		{"GET", "/no/such/path", 404},
	} {
		req, _ := http.NewRequest(tt.method, srv.URL+tt.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != tt.want || body["detail"] == nil {
			t.Errorf("%s %s = %d %v, want %d with a detail", tt.method, tt.path, resp.StatusCode, body, tt.want)
		}
		if tt.want == 405 && resp.Header.Get("Allow") == "" {
			t.Errorf("%s %s: 405 without Allow", tt.method, tt.path)
		}
	}
}

func TestStreamedAnswers(t *testing.T) {
	srv := newTestWorker(t, func(c *Config) { c.StreamChunkBytes = 1000 })
	prompt := strings.Repeat("p", 50_000)
	resp, err := http.Post(srv.URL+"/v1/images/generations", "application/json", strings.NewReader(`{"prompt":"`+prompt+`","num_inference_steps":1}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ContentLength != -1 || len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
		t.Fatalf("answer not chunked: length %d, encoding %v", resp.ContentLength, resp.TransferEncoding)
	}
	var v struct {
		Data []struct {
			RevisedPrompt string `json:"revised_prompt"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || len(v.Data) != 1 || v.Data[0].RevisedPrompt != prompt {
		t.Fatalf("streamed answer broken: %v", err)
	}
}

// TestMetrics: /metrics counts the generations queued and running, as
// sglang-diffusion's scheduler gauges do; --no-metrics serves none.
func TestMetrics(t *testing.T) {
	srv := newTestWorker(t, func(c *Config) { c.TaskType, c.TimeScale = "T2V", 1 })
	gauges := func() (queued, running string) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "sglang:diffusion_num_queue_reqs "); ok {
				queued = v
			}
			if v, ok := strings.CutPrefix(line, "sglang:diffusion_num_running_reqs "); ok {
				running = v
			}
		}
		return queued, running
	}
	if q, r := gauges(); q != "0.0" || r != "0.0" {
		t.Fatalf("idle: queued %s running %s", q, r)
	}
	for range 3 {
		resp, err := http.Post(srv.URL+"/v1/videos", "application/json", strings.NewReader(`{"prompt":"p"}`))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("create: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		q, r := gauges()
		if q == "2.0" && r == "1.0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("three videos of seconds each: queued %s running %s, want 2 and 1", q, r)
		}
		time.Sleep(10 * time.Millisecond)
	}
	off := newTestWorker(t, func(c *Config) { c.NoMetrics = true })
	resp, err := http.Get(off.URL + "/metrics")
	if err != nil || resp.StatusCode != 404 {
		t.Fatalf("/metrics with NoMetrics = %v %v", resp, err)
	}
	resp.Body.Close()
}

// TestSlowdownReachesQueuedWorkAndAbandonedWorkCounts: a slowdown slows
// the generations that start after it, queued ones included; a generation
// that starts after its client left is counted.
func TestSlowdownReachesQueuedWorkAndAbandonedWorkCounts(t *testing.T) {
	const service = 100 * time.Millisecond
	srv := newTestWorker(t, func(c *Config) { c.TimeScale, c.Base, c.PerStep = 1, service, 0 })
	gen := func(ctx context.Context) (time.Duration, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/images/generations", strings.NewReader(`{"prompt":"x"}`))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return time.Since(start), nil
	}
	depth := func() int {
		var st Stats
		resp, err := http.Get(srv.URL + "/stats")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_ = json.NewDecoder(resp.Body).Decode(&st)
		return st.QueueDepth
	}
	waitDepth := func(n int) {
		deadline := time.Now().Add(5 * time.Second)
		for depth() != n {
			if time.Now().After(deadline) {
				t.Fatalf("queue depth never reached %d", n)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	first := make(chan error, 1)
	go func() { _, err := gen(context.Background()); first <- err }()
	waitDepth(1)
	// Queued behind the first, its client leaves before it starts.
	ctx, cancel := context.WithCancel(context.Background())
	gone := make(chan error, 1)
	go func() { _, err := gen(ctx); gone <- err }()
	waitDepth(2)
	cancel()
	<-gone
	// Queued now, slowed before it starts.
	slowed := make(chan time.Duration, 1)
	go func() { d, _ := gen(context.Background()); slowed <- d }()
	waitDepth(3)
	if code, _, _ := post(t, srv.URL+"/_fake/faults", `{"slowdown": 3}`); code != 200 {
		t.Fatal("cannot set slowdown")
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	// It waited for two generations (the abandoned one slowed too) and
	// ran 3x slower itself.
	if d := <-slowed; d < 3*service+service {
		t.Fatalf("a generation queued before the slowdown took %v, want at least %v", d, 4*service)
	}
	resp, err := http.Get(srv.URL + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || st.StartedAfterClientGone != 1 {
		t.Fatalf("started after the client left: %d (%v), want 1", st.StartedAfterClientGone, err)
	}
}
