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
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

// videoPoll is how often each job is polled to its end.
const videoPoll = 100 * time.Millisecond

// videoBurst: VideoJobs video creates at once to video workers, each then
// polled to its end (slow: one worker turns 3x slower a second in). With
// the queue, creates that find no free slot are held by the router and
// answered at once; without it, each is bound to a worker on arrival.
func videoBurst(slow bool) func(context.Context, *queueLab) (QueueScenario, error) {
	return func(ctx context.Context, l *queueLab) (QueueScenario, error) {
		var r QueueScenario
		n := l.qc.VideoJobs
		ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		start := time.Now()
		if slow {
			t := time.AfterFunc(time.Second, func() { _ = l.post(l.workers[0]+"/_fake/faults", `{"slowdown":3}`) })
			defer t.Stop()
		}
		ids := make([]string, n)
		took := make([]float64, n)
		ends := make([]time.Time, n)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var firstErr error
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t0 := time.Now()
				id, err := l.createVideo(ctx, i)
				took[i] = time.Since(t0).Seconds()
				if err == nil {
					ids[i] = id
					ends[i], err = l.pollVideo(ctx, id)
				}
				if err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, fmt.Errorf("job %d: %w", i, err))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		var last time.Time
		for i, e := range ends {
			if e.IsZero() {
				r.Lost++
				continue
			}
			r.Served++
			last = maxTime(last, e)
			if strings.Contains(ids[i], "."+wire.HeldWorker+".") {
				r.Held++
			}
		}
		r.MakespanS = last.Sub(start).Seconds()
		slices.Sort(took)
		r.CreateP50S, r.CreateP99S, r.CreateMaxS = took[n/2], took[min(n*99/100, n-1)], took[n-1]
		seen := map[string]int{}
		for _, w := range l.workers {
			if err := l.workerPrompts(w, seen); err != nil {
				return r, err
			}
		}
		for i := range n {
			if seen[videoPrompt(i)] > 1 {
				r.RunTwice++
			}
		}
		if firstErr != nil && r.Served == 0 {
			return r, firstErr
		}
		return r, nil
	}
}

func videoPrompt(i int) string { return fmt.Sprintf("video job %d", i) }

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// createVideo sends one JSON video create and returns the job's id.
func (l *queueLab) createVideo(ctx context.Context, i int) (string, error) {
	body := fmt.Sprintf(`{"prompt":%q,"size":"256x256","num_inference_steps":1}`, videoPrompt(i))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.router.Front+wire.PathVideos, strings.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := l.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var job struct {
		ID string `json:"id"`
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &job) != nil || job.ID == "" {
		return "", fmt.Errorf("create: %d %s", resp.StatusCode, b)
	}
	return job.ID, nil
}

// pollVideo polls a job until it completed (its end: when the poll saw
// it) or failed.
func (l *queueLab) pollVideo(ctx context.Context, id string) (time.Time, error) {
	t := time.NewTicker(videoPoll)
	defer t.Stop()
	for {
		var job struct {
			Status string `json:"status"`
		}
		if err := getJSON(l.client, l.router.Front+wire.PathVideos+"/"+id, &job); err == nil {
			switch job.Status {
			case "completed":
				return time.Now(), nil
			case "failed":
				return time.Time{}, fmt.Errorf("job %s failed", id)
			}
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-t.C:
		}
	}
}

// workerPrompts counts the prompts of the jobs a worker was given (its own
// job list).
func (l *queueLab) workerPrompts(url string, into map[string]int) error {
	var list struct {
		Data []struct {
			Prompt string `json:"prompt"`
		} `json:"data"`
	}
	if err := getJSON(l.client, url+wire.PathVideos, &list); err != nil {
		return fmt.Errorf("worker %s job list: %w", url, err)
	}
	for _, v := range list.Data {
		into[v.Prompt]++
	}
	return nil
}
