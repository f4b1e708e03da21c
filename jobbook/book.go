// Package jobbook remembers which weight version made each video job, so
// that a job list, which a worker answers with its own ids, can hand out
// the same signed ids (version included) the job's create did, through any
// Envoy. The filters record each job as they create it and look versions
// up when they sign a list. The book is bounded: the oldest records go
// first, and a job it no longer knows is listed with an id that carries no
// version (polls of it then name the worker's current version).
package jobbook

import "sync"

// DefaultCapacity is how many jobs a book remembers: many rollouts' worth
// of video jobs, at about 200 bytes each.
const DefaultCapacity = 1 << 18

type key struct{ worker, id string }

// Book maps (worker key, worker's job id) to the weight version that made
// the job. It is safe for concurrent use.
type Book struct {
	mu       sync.Mutex
	versions map[key]string
	// ring holds the keys in the order they were recorded; next is where
	// the next one goes, evicting what was there.
	ring []key
	next int
}

// New returns an empty book that remembers up to capacity jobs.
func New(capacity int) *Book {
	return &Book{versions: map[key]string{}, ring: make([]key, 0, max(capacity, 1))}
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
