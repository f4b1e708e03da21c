// Package jobbook remembers which weight version made each video job, so
// that a job list, which a worker answers with its own ids, can hand out
// the same signed ids (version included) the job's create did, through any
// Envoy. The filters record each job as they create it and look versions
// up when they sign a list. The book is bounded: the oldest records go
// first, and a job it no longer knows is listed with an id that carries no
// version (polls of it then name the worker's current version).
package jobbook

import (
	"slices"
	"sync"
	"time"
)

// DefaultCapacity is how many jobs a book remembers: many rollouts' worth
// of video jobs, at about 200 bytes each.
const DefaultCapacity = 1 << 18

type key struct{ worker, id string }

// openJob is a recorded job not known to have ended.
type openJob struct {
	id string
	at time.Time
}

// maxOpenPerWorker bounds the open jobs remembered per worker (the oldest
// go first): far more than a worker's queue holds.
const maxOpenPerWorker = 4096

// Book maps (worker key, worker's job id) to the weight version that made
// the job. It is safe for concurrent use.
type Book struct {
	mu       sync.Mutex
	versions map[key]string
	// ring holds the keys in the order they were recorded; next is where
	// the next one goes, evicting what was there.
	ring []key
	next int
	// open are each worker's jobs not known to have ended, in the order
	// they were recorded (Open, Ended).
	open map[string][]openJob
	now  func() time.Time
}

// New returns an empty book that remembers up to capacity jobs.
func New(capacity int) *Book {
	return &Book{versions: map[key]string{}, ring: make([]key, 0, max(capacity, 1)), open: map[string][]openJob{}, now: time.Now}
}

// Record notes that version made the job id on worker. Recording a job
// again changes its version in place.
func (b *Book) Record(worker, id, version string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := key{worker, id}
	if _, ok := b.versions[k]; ok {
		b.versions[k] = version
		return
	}
	open := append(b.open[worker], openJob{id: id, at: b.now()})
	if len(open) > maxOpenPerWorker {
		open = slices.Delete(open, 0, len(open)-maxOpenPerWorker)
	}
	b.open[worker] = open
	if len(b.ring) < cap(b.ring) {
		b.ring = append(b.ring, k)
	} else {
		delete(b.versions, b.ring[b.next])
		b.ring[b.next] = k
		b.next = (b.next + 1) % len(b.ring)
	}
	b.versions[k] = version
}

// Versions returns the known versions of worker's jobs ids (unknown ones
// are left out).
func (b *Book) Versions(worker string, ids []string) map[string]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]string, len(ids))
	for _, id := range ids {
		if v, ok := b.versions[key{worker, id}]; ok {
			out[id] = v
		}
	}
	return out
}

// Len is how many jobs the book holds.
func (b *Book) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.versions)
}

// Open returns up to limit of worker's jobs recorded since that are not
// known to have ended, oldest first (a worker runs its jobs in that
// order): the jobs a worker that serves no job list is asked about one by
// one. Older ones are forgotten.
func (b *Book) Open(worker string, since time.Time, limit int) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	open := b.open[worker]
	old := 0
	for old < len(open) && open[old].at.Before(since) {
		old++
	}
	if open = open[old:]; len(open) == 0 {
		delete(b.open, worker)
		return nil
	}
	b.open[worker] = open
	out := make([]string, 0, min(limit, len(open)))
	for _, j := range open[:min(limit, len(open))] {
		out = append(out, j.id)
	}
	return out
}

// Ended notes that worker's job id ended: Open no longer lists it.
func (b *Book) Ended(worker, id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	open := b.open[worker]
	if i := slices.IndexFunc(open, func(j openJob) bool { return j.id == id }); i >= 0 {
		open = slices.Delete(open, i, i+1)
	}
	if len(open) == 0 {
		delete(b.open, worker)
		return
	}
	b.open[worker] = open
}
