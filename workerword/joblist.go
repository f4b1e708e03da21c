package workerword

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

// Job is one entry of a worker's job list.
type Job struct {
	ID     string   `json:"id"`
	Status string   `json:"status"`
	GPUSec *float64 `json:"inference_time_s"`
}

// Ended reports whether the worker is done with the job.
func (j Job) Ended() bool { return j.Status == "completed" || j.Status == "failed" }

// ended is the job as the Envoys are told it ended: with its GPU time when
// it completed and said a sane one.
func (j Job) ended() wire.EndedJob {
	e := wire.EndedJob{ID: j.ID}
	if j.Status == "completed" && j.GPUSec != nil && *j.GPUSec > 0 && *j.GPUSec*1000 <= wire.MaxJobGPUMs {
		e.GPUMs = *j.GPUSec * 1000
	}
	return e
}

// ParseJobList reads one page of GET /v1/videos.
func ParseJobList(body []byte) ([]Job, error) {
	var page struct {
		Data []Job `json:"data"`
	}
	if err := json.Unmarshal(body, &page); err != nil {
		return nil, fmt.Errorf("job list: %w", err)
	}
	return page.Data, nil
}

// endedJobs reads the job list on from the cursor (oldest first: sglang
// runs jobs in that order) and returns the jobs that ended since they
// were last passed on.
func (w *Watcher) endedJobs(ctx context.Context, t Target, st *state) ([]wire.EndedJob, error) {
	var out []wire.EndedJob
	for range maxListPages {
		q := url.Values{"limit": {fmt.Sprint(listPage)}, "order": {"asc"}}
		if st.cursor != "" {
			q.Set("after", st.cursor)
		}
		body, code, err := w.get(ctx, t.URL+wire.PathVideos+"?"+q.Encode())
		if err != nil {
			return out, err
		}
		if code == http.StatusNotFound || code == http.StatusMethodNotAllowed || code == http.StatusNotImplemented {
			return out, noList(code)
		}
		if code != http.StatusOK {
			return out, fmt.Errorf("job list answered %d", code)
		}
		jobs, err := ParseJobList(body)
		if err != nil {
			return out, err
		}
		if len(jobs) == 0 && st.cursor != "" {
			// Nothing after the cursor, or the cursor's job was deleted
			// (the list then has nothing to continue from): start over.
			if _, code, err := w.get(ctx, t.URL+wire.PathVideos+"/"+url.PathEscape(st.cursor)); err == nil && code == http.StatusNotFound {
				st.cursor = ""
				continue
			}
		}
		allEnded := true
		for _, j := range jobs {
			if !j.Ended() {
				allEnded = false
				continue
			}
			if !st.reported[j.ID] && j.ID != "" && len(j.ID) <= wire.MaxJobID {
				out = append(out, j.ended())
				st.remember(j.ID)
			}
			if allEnded {
				st.cursor = j.ID
			}
		}
		if !allEnded || len(jobs) < listPage {
			return out, nil
		}
	}
	return out, nil
}

// noList: the worker serves no job list (the status it answered).
type noList int

func (n noList) Error() string { return fmt.Sprintf("the worker serves no job list (%d)", int(n)) }

// pollJobs asks a worker that serves no job list about its open jobs one
// by one (GET /v1/videos/{id}), oldest first up to the first still running
// (at most pollsPerReading), and returns those that ended: done, failed,
// or no longer known to the worker (deleted, forgotten). Nobody else may
// ever poll them: without this, their cost would count on the worker
// until the filters' hold passes.
func (w *Watcher) pollJobs(ctx context.Context, t Target, st *state, now time.Time) []wire.EndedJob {
	if w.Jobs == nil || t.Key == "" {
		return nil
	}
	var out []wire.EndedJob
	for _, id := range w.Jobs.Open(t.Key, now.Add(-w.OpenFor), pollsPerReading) {
		body, code, err := w.get(ctx, t.URL+wire.PathVideos+"/"+url.PathEscape(id))
		if err != nil {
			w.Log.WithError(err).WithField("worker", t.URL).Debug("polling a job")
			return out
		}
		var j Job
		switch {
		case code == http.StatusNotFound:
		case code == http.StatusOK && json.Unmarshal(body, &j) == nil && j.Ended():
		default:
			// Running or queued (or an answer it cannot read): the jobs
			// after it wait behind it.
			return out
		}
		j.ID = id // a 404 has no body
		if len(id) <= wire.MaxJobID && !st.reported[id] {
			out = append(out, j.ended())
			st.remember(id)
		}
		w.Jobs.Ended(t.Key, id)
	}
	return out
}

func (st *state) remember(id string) {
	st.reported[id] = true
	st.order = append(st.order, id)
	if len(st.order) > rememberReported {
		delete(st.reported, st.order[0])
		st.order = st.order[1:]
	}
}
