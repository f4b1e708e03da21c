package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"time"

	"github.com/diffrouter/diffusion-router/registry"
)

// A video job runs on its worker after the call that created it has
// answered, so a drain that waits for in-flight requests does not see it.
// Before a drained worker's weights change, the drain also waits until the
// worker's own job list shows none of its jobs queued or running.

const (
	// jobListPage is the page size asked of a worker's job list (sglang's
	// maximum).
	jobListPage = 100
	// jobListPages bounds how much of a list one reading pages through.
	jobListPages = 100
	// jobsPoll is how often a draining worker's job list is read again.
	jobsPoll = 200 * time.Millisecond
)

// jobPage is what matters of one page of GET /v1/videos.
type jobPage struct {
	Data []struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	} `json:"data"`
}

// unfinishedJobs counts the jobs on a page that are queued or running and
// returns the last id (the cursor for the next page).
func unfinishedJobs(body []byte) (unfinished int, last string, err error) {
	var p jobPage
	if err := json.Unmarshal(body, &p); err != nil {
		return 0, "", fmt.Errorf("job list is not JSON: %w", err)
	}
	for _, j := range p.Data {
		if j.Status == "queued" || j.Status == "in_progress" {
			unfinished++
		}
	}
	if n := len(p.Data); n > 0 {
		last = p.Data[n-1].ID
	}
	return unfinished, last, nil
}

// countUnfinishedJobs reads a worker's whole job list (bounded) and counts
// its queued and running jobs.
func (wc *workerClient) countUnfinishedJobs(ctx context.Context, base string) (int, error) {
	total, after := 0, ""
	for range jobListPages {
		q := url.Values{"limit": {fmt.Sprint(jobListPage)}, "order": {"desc"}}
		if after != "" {
			q.Set("after", after)
		}
		body, err := wc.get(ctx, base+"/v1/videos?"+q.Encode(), 16<<20)
		if err != nil {
			return 0, err
		}
		n, last, err := unfinishedJobs(body)
		if err != nil {
			return 0, err
		}
		total += n
		if last == "" || last == after {
			return total, nil
		}
		after = last
	}
	return total, nil
}

// waitJobsDone waits until a video worker holds no queued or running job,
// or ctx ends. It reports whether the worker said so; a worker whose list
// cannot be read is not waited for (its own queue still runs the jobs
// before a weight update), and the reason is returned.
func (wc *workerClient) waitJobsDone(ctx context.Context, w registry.Worker) (bool, error) {
	if !w.Caps.Video() {
		return true, nil
	}
	t := time.NewTicker(jobsPoll)
	defer t.Stop()
	for {
		n, err := wc.countUnfinishedJobs(ctx, w.URL.String())
		if err != nil {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			return false, err
		}
		if n == 0 {
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("%d video jobs still queued or running: %w", n, ctx.Err())
		case <-t.C:
		}
	}
}
