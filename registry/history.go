package registry

import (
	"slices"
)

// The fleet's weight versions in the order it first had them (Weights.History):
// what "this version or later" means to a request that names a minimum
// version. A version enters when an update toward it starts (BeginUpdate) or
// when a worker is first seen holding it.

// maxHistory bounds the versions remembered (the oldest go first).
const maxHistory = 1000

// noteLocked adds v to the history if it is new; r.mu is held.
func (r *Registry) noteLocked(v string) {
	if v == "" || slices.Contains(r.fleet.History, v) {
		return
	}
	h := append(slices.Clone(r.fleet.History), v)
	if len(h) > maxHistory {
		h = h[len(h)-maxHistory:]
	}
	r.fleet.History = h
}

// noteWorkersLocked adds the versions workers hold that the history has not
// seen (in name order, when one change brings several); r.mu is held.
func (r *Registry) noteWorkersLocked() {
	var fresh []string
	for _, w := range r.workers {
		if w.WeightVersion != "" && !slices.Contains(r.fleet.History, w.WeightVersion) && !slices.Contains(fresh, w.WeightVersion) {
			fresh = append(fresh, w.WeightVersion)
		}
	}
	slices.Sort(fresh)
	for _, v := range fresh {
		r.noteLocked(v)
	}
}

// BeginUpdate records that an update toward version v is under way: v
// joins the history now (requests naming it wait for it rather than being
// refused) and Weights.Updating names it until EndUpdate.
func (r *Registry) BeginUpdate(v string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.noteLocked(v)
	r.fleet.Updating = v
}

// EndUpdate records that no update is under way.
func (r *Registry) EndUpdate() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fleet.Updating = ""
}
