package leastwork

import (
	"encoding/binary"
	"math"
	"slices"
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

// Video jobs. POST /v1/videos answers at once and the worker runs the job
// afterwards, so a job's cost stays on its worker after the create call
// ended: until a poll's answer says the job finished (here, or at another
// Envoy, relayed by the control plane), or JobHold passes. The list lives
// apart from the table (its own shared-data key): it changes only when a
// job starts or ends, and the table, read on every pick, stays small.

// Job is a video job whose cost is still counted on its worker.
type Job struct {
	// ID is the worker's own job id.
	ID   string
	Addr string
	Cost int64
	// Until is when the job stops counting whatever a poll says (µs).
	Until int64
	// Held is when it started counting (µs): a worker that says it held
	// nothing at a later time has ended it.
	Held int64
}

const (
	// JobHold bounds how long a job counts when no poll through the
	// router says it finished (a client that polls a worker directly, or
	// never). Real videos take minutes; a job that outlives this still
	// runs, uncounted.
	JobHold = 30 * time.Minute
	// MaxJobs bounds the jobs one Envoy counts; beyond it the oldest stop
	// counting.
	MaxJobs = 4096
	// MaxFinished bounds the finished job ids one report relays.
	MaxFinished = 512
	// jobsFormat versions the list's encoding. A change must come with a
	// new tableFormat: the table's work for jobs a list that cannot be
	// read drops would otherwise stay counted.
	jobsFormat = 2
)

// Jobs is one Envoy's counted jobs, oldest first.
type Jobs struct{ List []Job }

// Hold counts a job; it returns the jobs that stop counting to make room
// (their cost must leave their workers).
func (j *Jobs) Hold(job Job) []Job {
	var out []Job
	if n := len(j.List) + 1 - MaxJobs; n > 0 {
		out = slices.Clone(j.List[:n])
		j.List = slices.Delete(j.List, 0, n)
	}
	j.List = append(j.List, job)
	return out
}

// Finish stops counting the job with this id, if counted, and returns it.
func (j *Jobs) Finish(id string) (Job, bool) {
	i := slices.IndexFunc(j.List, func(x Job) bool { return x.ID == id })
	if i < 0 {
		return Job{}, false
	}
	job := j.List[i]
	j.List = slices.Delete(j.List, i, i+1)
	return job, true
}

// EndBefore stops counting, for each worker in before, the jobs counted
// on it before its time there (µs): the worker said it held nothing then.
func (j *Jobs) EndBefore(before map[string]int64) []Job {
	var out []Job
	j.List = slices.DeleteFunc(j.List, func(x Job) bool {
		if t, ok := before[x.Addr]; ok && x.Held < t {
			out = append(out, x)
			return true
		}
		return false
	})
	return out
}

// Shorten makes the job with this id stop counting by until at the
// latest (a deleted job: the worker forgets it but may still run it). It
// reports whether the job is counted.
func (j *Jobs) Shorten(id string, until int64) (Job, bool) {
	i := slices.IndexFunc(j.List, func(x Job) bool { return x.ID == id })
	if i < 0 {
		return Job{}, false
	}
	j.List[i].Until = min(j.List[i].Until, until)
	return j.List[i], true
}

// Expire stops counting the jobs whose hold ended by now and returns them.
func (j *Jobs) Expire(now int64) []Job {
	var out []Job
	j.List = slices.DeleteFunc(j.List, func(x Job) bool {
		if x.Until <= now {
			out = append(out, x)
			return true
		}
		return false
	})
	return out
}

// AppendEncode appends the list's binary form to b.
func (j *Jobs) AppendEncode(b []byte) []byte {
	b = append(b, jobsFormat)
	b = binary.AppendUvarint(b, uint64(len(j.List)))
	for _, x := range j.List {
		b = appendString(b, x.ID)
		b = appendString(b, x.Addr)
		b = binary.AppendVarint(b, x.Cost)
		b = binary.AppendVarint(b, x.Until)
		b = binary.AppendVarint(b, x.Held)
	}
	return b
}

// DecodeJobs reads AppendEncode's output; empty input is no jobs.
func DecodeJobs(b []byte) (Jobs, error) {
	var j Jobs
	if len(b) == 0 {
		return j, nil
	}
	if b[0] != jobsFormat {
		return j, ErrFormat
	}
	r := reader{b: b[1:]}
	n := r.count()
	for i := uint64(0); i < n && r.err == nil; i++ {
		j.List = append(j.List, Job{ID: r.string(), Addr: r.string(), Cost: r.varint(), Until: r.varint(), Held: r.varint()})
	}
	if r.err != nil || len(r.b) != 0 {
		return Jobs{}, ErrFormat
	}
	return j, nil
}

// AppendEnded adds a job seen ending to an encoded list of them (the ones
// the next report relays), unless the list already holds MaxFinished; an
// unreadable list starts over. It reports whether e was added.
func AppendEnded(list []byte, e wire.EndedJob) ([]byte, bool) {
	switch n, err := DecodeEnded(list); {
	case err != nil:
		list = nil
	case len(n) >= MaxFinished:
		return list, false
	}
	list = appendString(list, e.ID)
	return binary.LittleEndian.AppendUint64(list, math.Float64bits(e.GPUMs)), true
}

// DecodeEnded reads AppendEnded's output; empty input is none.
func DecodeEnded(list []byte) ([]wire.EndedJob, error) {
	r := reader{b: list}
	var out []wire.EndedJob
	for len(r.b) > 0 && r.err == nil {
		out = append(out, wire.EndedJob{ID: r.string(), GPUMs: r.float()})
	}
	if r.err != nil {
		return nil, r.err
	}
	return out, nil
}
