package tagger

import (
	"math"
	"slices"
	"time"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"

	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/wire"
)

// holdJob keeps a created video job's cost on its worker after the create
// call's answer, until the job ends (endJob) or its hold passes. If the
// job cannot be recorded, s stays unreleased and the stream's end
// releases it.
func (p *picker) holdJob(s *sent, id string, now int64) {
	if s == nil || s.released {
		return
	}
	var dropped []leastwork.Job
	err := casBytes(keyJobs, func(raw []byte) ([]byte, bool) {
		jobs, _ := leastwork.DecodeJobs(raw) // an unreadable list starts over
		dropped = jobs.Hold(leastwork.Job{ID: id, Addr: s.addr, Cost: s.cost, Until: now + leastwork.JobHold.Microseconds(), Held: now})
		return jobs.AppendEncode(nil), true
	})
	if err != nil {
		proxywasm.LogWarnf("diffusion-tagger: hold video job: %v", err)
		return
	}
	s.released = true
	p.releaseJobs(dropped)
}

// endJob stops counting a job that a poll or a delete showed ended. A job
// this Envoy does not count may be another's: relay says to tell them.
// gpuMS, when the worker said how long the job took on its GPU
// (inference_time_s), teaches the worker's speed here and, through the
// next report, fleet-wide.
func (p *picker) endJob(id string, relay bool, gpuMS float64) {
	var job leastwork.Job
	found := false
	err := casBytes(keyJobs, func(raw []byte) ([]byte, bool) {
		jobs, _ := leastwork.DecodeJobs(raw)
		if job, found = jobs.Finish(id); !found {
			return nil, false
		}
		return jobs.AppendEncode(nil), true
	})
	if err != nil {
		proxywasm.LogWarnf("diffusion-tagger: end video job: %v", err)
		return
	}
	if found {
		p.releaseJobs([]leastwork.Job{job})
		if gpuMS > 0 && !math.IsInf(gpuMS, 0) {
			g := p.readGlobal()
			if err := p.updateHost(job.Addr, func(h *leastwork.Host) bool { return g.Teach(h, job.Cost, gpuMS) }); err == nil {
				now := nowMicro()
				p.done = leastwork.AppendCompletion(p.done, wire.Completion{Addr: job.Addr, Cost: job.Cost,
					Sent: now - int64(gpuMS*1000), Done: now, GPU: true})
			}
		}
		return
	}
	if relay && id != "" && len(id) <= wire.MaxJobID {
		// The Envoy that counts the job learns its worker's speed from
		// the GPU time.
		e := wire.EndedJob{ID: id}
		if gpuMS > 0 && gpuMS <= wire.MaxJobGPUMs {
			e.GPUMs = gpuMS
		}
		_ = casBytes(keyEnded, func(raw []byte) ([]byte, bool) { return leastwork.AppendEnded(raw, e) })
	}
}

// idleClockMargin: a worker's idle word ends only jobs counted this long
// before it, as the control plane's clock and Envoy's may differ a little.
const idleClockMargin = time.Second

// endJobsBefore stops counting, for each worker in before, the jobs
// counted on it before its time there (µs): one reading of the job list
// for the whole view.
func (p *picker) endJobsBefore(before map[string]int64) {
	var ended []leastwork.Job
	err := casBytes(keyJobs, func(raw []byte) ([]byte, bool) {
		if len(raw) == 0 {
			return nil, false
		}
		jobs, _ := leastwork.DecodeJobs(raw)
		if ended = jobs.EndBefore(before); len(ended) == 0 {
			return nil, false
		}
		return jobs.AppendEncode(nil), true
	})
	if err != nil {
		proxywasm.LogWarnf("diffusion-tagger: end idle worker's jobs: %v", err)
		return
	}
	p.releaseJobs(ended)
}

// deleteJob keeps a deleted job counted for the time it is expected to
// take at most: sglang-diffusion forgets a deleted job but keeps running
// it, and only the worker's own word (idle) or that time ends it.
func (p *picker) deleteJob(id string, now int64) {
	g := p.readGlobal()
	err := casBytes(keyJobs, func(raw []byte) ([]byte, bool) {
		jobs, _ := leastwork.DecodeJobs(raw)
		i := slices.IndexFunc(jobs.List, func(x leastwork.Job) bool { return x.ID == id })
		if i < 0 {
			return nil, false
		}
		j := jobs.List[i]
		mpc := p.speedOf(j.Addr)
		// Its whole expected time from when it was counted: the job may
		// have waited behind others before it ran. Never measured (no
		// speed at all): the hold stays.
		expected := time.Duration((float64(j.Cost) + g.Fit.Base) * mpc * float64(time.Millisecond))
		until := j.Until
		if expected > 0 {
			until = max(now+time.Second.Microseconds(), j.Held+expected.Microseconds())
		}
		if _, ok := jobs.Shorten(id, until); !ok {
			return nil, false
		}
		return jobs.AppendEncode(nil), true
	})
	if err != nil {
		proxywasm.LogWarnf("diffusion-tagger: delete video job: %v", err)
	}
}

// releaseJobs takes ended jobs' cost off their workers. A job says
// nothing of its worker's speed: a poll sees it ended only some time
// after it did.
func (p *picker) releaseJobs(jobs []leastwork.Job) {
	if len(jobs) == 0 {
		return
	}
	freed := make([]string, 0, len(jobs))
	for _, j := range jobs {
		if err := p.updateHost(j.Addr, func(h *leastwork.Host) bool { h.End(j.Cost, 0, 0, false); return true }); err != nil {
			proxywasm.LogWarnf("diffusion-tagger: release video job on %s: %v", j.Addr, err)
		}
		freed = append(freed, j.Addr)
	}
	p.reportNow(nowMicro(), freed...)
}

// speedOf is a worker's learned speed (ms per cost): its own here, else
// what the control plane learned, else the fleet's median in the view
// (0: nobody measured yet).
func (p *picker) speedOf(addr string) float64 {
	if h := p.readHost(addr); h.MsPerCost > 0 {
		return h.MsPerCost
	}
	v := p.currentView(nowMicro())
	if v == nil {
		return 0
	}
	var all []float64
	for _, w := range v.Workers {
		if w.Addr == addr && w.MsPerCost > 0 {
			return w.MsPerCost
		}
		if w.MsPerCost > 0 {
			all = append(all, w.MsPerCost)
		}
	}
	return leastwork.Median(all)
}

// expireJobs stops counting the jobs whose hold passed.
func (p *picker) expireJobs(now int64) {
	var ended []leastwork.Job
	_ = casBytes(keyJobs, func(raw []byte) ([]byte, bool) {
		jobs, _ := leastwork.DecodeJobs(raw)
		if ended = jobs.Expire(now); len(ended) == 0 {
			return nil, false
		}
		return jobs.AppendEncode(nil), true
	})
	p.releaseJobs(ended)
}
