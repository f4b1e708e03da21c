package loadboard

import (
	"sync"

	"github.com/diffrouter/diffusion-router/registry"
)

// applied tracks the newest registry snapshot every connected Envoy runs:
// the publisher hands over each snapshot before it goes out, and synced
// names the newest generation all Envoys acknowledged.
//
// A view may list a worker only once the Envoys run the configuration that
// made it routable: override_host sends a pick to the host as Envoy has it,
// and Envoy stamps the answer with the host's weight version from its own
// copy. A worker put back after a drain-mode update, listed before the
// Envoys have its new version, would answer from the new weights under the
// old version's header.
type applied struct {
	synced func() uint64

	mu      sync.Mutex
	pending []registry.Snapshot // published, not yet known applied; oldest first
	last    registry.Snapshot
	have    bool
}

// maxUnapplied bounds the snapshots kept while the Envoys lag; when more
// pile up, the oldest go (a newer one applied supersedes them anyway).
const maxUnapplied = 256

func (a *applied) published(s registry.Snapshot) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if n := len(a.pending); n > 0 && a.pending[n-1].Generation >= s.Generation {
		return
	}
	if len(a.pending) == maxUnapplied {
		a.pending = append(a.pending[:0], a.pending[1:]...)
	}
	a.pending = append(a.pending, s)
}

// get returns the newest snapshot all Envoys run, if any is known.
func (a *applied) get() (registry.Snapshot, bool) {
	gen := a.synced()
	a.mu.Lock()
	defer a.mu.Unlock()
	k := 0
	for k < len(a.pending) && a.pending[k].Generation <= gen {
		k++
	}
	if k > 0 {
		a.last, a.have = a.pending[k-1], true
		a.pending = append(a.pending[:0], a.pending[k:]...)
	}
	return a.last, a.have
}

// runs reports whether the Envoys run w as the registry now has it:
// routable, with the same weights.
func runs(in registry.Snapshot, w registry.Worker) bool {
	a, ok := in.Get(w.Key())
	return ok && a.Routable() && a.WeightVersion == w.WeightVersion && a.ModelPath == w.ModelPath
}
