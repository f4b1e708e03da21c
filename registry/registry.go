// Package registry is the single source of truth about the worker fleet: which
// workers exist, their state and why, their capabilities and weight versions.
// It does no I/O. Every mutation bumps one generation counter, so each change
// maps to exactly one consistent snapshot that the xDS layer can publish.
package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// State is a worker's place in its lifecycle.
type State string

const (
	// StatePending: registered, not yet routable (being checked or updated).
	StatePending State = "pending"
	// StateActive: receives new requests.
	StateActive State = "active"
	// StateDraining: finishes in-flight requests, receives no new ones.
	StateDraining State = "draining"
	// StateQuarantined: failed; stays out until an operator re-admits it.
	StateQuarantined State = "quarantined"
	// StateUpdating: taken out of rotation for a drain-mode weight update;
	// finishes in-flight requests, then loads weights, then returns.
	StateUpdating State = "updating"
)

// States is every state, in lifecycle order.
var States = []State{StatePending, StateActive, StateDraining, StateUpdating, StateQuarantined}

// InitialWeightVersion is the version of weights a worker was started with,
// before any update through the router.
const InitialWeightVersion = "0"

// ErrNotFound is returned for operations on a worker that is not registered.
var ErrNotFound = errors.New("worker not registered")

// Video task types, as sglang-diffusion reports them in /v1/models.
var videoTaskTypes = map[string]bool{"T2V": true, "I2V": true, "TI2V": true, "V2V": true}

// Capabilities is what a worker said about itself in GET /v1/models.
type Capabilities struct {
	// Known is false until /v1/models was read successfully.
	Known     bool              `json:"known"`
	TaskTypes []string          `json:"task_types,omitempty"`
	ModelIDs  []string          `json:"models,omitempty"`
	Models    []json.RawMessage `json:"-"` // the entries as the worker sent them
}

// Image task types: the workers image generations and edits prefer.
var imageTaskTypes = map[string]bool{"T2I": true, "I2I": true, "TI2I": true}

// Image reports whether the worker generates or edits images.
func (c Capabilities) Image() bool {
	for _, t := range c.TaskTypes {
		if imageTaskTypes[strings.ToUpper(t)] {
			return true
		}
	}
	return false
}

// Video reports whether the worker can serve /v1/videos.
func (c Capabilities) Video() bool {
	for _, t := range c.TaskTypes {
		if videoTaskTypes[strings.ToUpper(t)] {
			return true
		}
	}
	return false
}

// Worker is one registered worker. Values are copies; mutate through Registry.
type Worker struct {
	URL     WorkerURL
	Address string // IP literal Envoy connects to (a hostname is resolved on admission)
	State   State
	Reason  string
	Since   time.Time
	AddedAt time.Time
	Caps    Capabilities
	// ConsecutiveFailures counts failed health probes in a row.
	ConsecutiveFailures int
	// WeightVersion and ModelPath say which weights the worker holds.
	WeightVersion string
	ModelPath     string
	// Asleep is set while the worker's memory is released: it takes no
	// requests until it is resumed.
	Asleep bool
	// Slots is how many requests the router-owned queue lets the worker
	// run at once (0: the router's --slots), for workers that batch.
	Slots int
}

// Key is the registry key: the canonical URL.
func (w Worker) Key() string { return w.URL.String() }

// Routable reports whether Envoy may send new requests to the worker.
func (w Worker) Routable() bool { return w.State == StateActive && !w.Asleep }

// InEnvoy reports whether the worker appears in Envoy's endpoints at all:
// active ones take traffic, draining and updating ones finish what they hold.
func (w Worker) InEnvoy() bool {
	switch w.State {
	case StateActive:
		return !w.Asleep
	case StateDraining, StateUpdating:
		return true
	}
	return false
}

// ValidVersion reports whether s may be a weight version. Versions reach
// every client in the x-weight-version header, so they are 1 to 128
// visible ASCII characters (0x21-0x7E): no spaces, no control characters,
// nothing that could end a header line.
func ValidVersion(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// ValidName reports whether s may be a model name or path: 1 to 1024
// bytes of UTF-8 without control characters (they would reach Envoy's
// metadata and route matchers, and a header where a name is echoed).
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 1024 || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// Weights is a version of model weights: what the trainer last pushed.
type Weights struct {
	Version   string `json:"weight_version"`
	ModelPath string `json:"model_path"`
	// Request is the body of the update that installed them (without the
	// router's own fields), replayed to workers that join later.
	Request map[string]any `json:"-"`
	// UpdatedAt is when the fleet switched.
	UpdatedAt time.Time `json:"updated_at"`
	// History is every weight version the fleet had, in the order it
	// first had them (history.go); Updating is the version an update
	// under way moves to ("" when none: not stored).
	History  []string `json:"history,omitempty"`
	Updating string   `json:"-"`
}

// Snapshot is a consistent view of the fleet at one generation.
type Snapshot struct {
	Generation uint64
	Workers    []Worker // sorted by Key
	// Fleet is the fleet's weight version; Version is empty until the first
	// update through the router.
	Fleet Weights
}

// Counts is how many workers are in each state, and how many active ones
// sleep: the one count the API, the metrics and the translation use.
type Counts struct {
	ByState map[State]int
	Asleep  int
	Total   int
}

// Count counts the snapshot's workers by state.
func (s Snapshot) Count() Counts {
	c := Counts{ByState: make(map[State]int, len(States)), Total: len(s.Workers)}
	for _, w := range s.Workers {
		c.ByState[w.State]++
		if w.Asleep {
			c.Asleep++
		}
	}
	return c
}

// Paused reports whether workers are out of rotation only for a while:
// loading weights, or asleep when the router-owned queue holds requests
// until they wake (holdAsleep). Requests with no worker then wait.
func (c Counts) Paused(holdAsleep bool) bool {
	return c.ByState[StateUpdating] > 0 || holdAsleep && c.Asleep > 0
}

// Get returns the worker with the canonical URL key.
func (s Snapshot) Get(key string) (Worker, bool) {
	i, ok := slices.BinarySearchFunc(s.Workers, key, func(w Worker, k string) int { return strings.Compare(w.Key(), k) })
	if !ok {
		return Worker{}, false
	}
	return s.Workers[i], true
}

// Registry holds the fleet. It is safe for concurrent use.
type Registry struct {
	mu      sync.Mutex
	gen     uint64
	workers map[string]*Worker
	fleet   Weights
	counter int // last numeric version handed out
	// store, when set, receives every change (see Persist).
	store        *Store
	onStoreError func(error)
	// storeErr is the last write's error; storeFailures counts them.
	storeErr      error
	storeFailures uint64
	now           func() time.Time
	subs          map[chan struct{}]struct{}
}

// New returns an empty registry. now is the clock (time.Now when nil).
func New(now func() time.Time) *Registry {
	if now == nil {
		now = time.Now
	}
	return &Registry{workers: map[string]*Worker{}, now: now, subs: map[chan struct{}]struct{}{}}
}

// Subscribe returns a channel that receives a value after every change
// (coalesced: a slow reader sees one wake-up for many changes) and a cancel
// function. Readers call Snapshot to see the new state.
func (r *Registry) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	r.mu.Lock()
	r.subs[ch] = struct{}{}
	r.mu.Unlock()
	return ch, func() {
		r.mu.Lock()
		delete(r.subs, ch)
		r.mu.Unlock()
	}
}

// ErrStore marks a change the store could not write. The change was taken
// back: memory and disk never disagree.
var ErrStore = errors.New("the registry store could not write the change")

// undo is what a change is about to touch, to put back if the store
// cannot write it.
type undo struct {
	workers map[string]*Worker // key -> the worker as it was; nil: absent
	fleet   Weights
	counter int
}

// beginLocked remembers the workers (keys) and the fleet data before a
// change. Caller holds mu.
func (r *Registry) beginLocked(keys ...string) undo {
	u := undo{workers: make(map[string]*Worker, len(keys)), fleet: r.fleet, counter: r.counter}
	for _, k := range keys {
		if w, ok := r.workers[k]; ok {
			c := copyWorker(*w)
			u.workers[k] = &c
		} else {
			u.workers[k] = nil
		}
	}
	return u
}

// commitLocked bumps the generation, writes the changed workers (keys) and
// the fleet's data to the store, and wakes subscribers. If the store
// cannot write, the change is undone and an ErrStore returned. Caller
// holds mu.
func (r *Registry) commitLocked(u undo, keys ...string) (uint64, error) {
	r.noteWorkersLocked()
	if r.store != nil {
		// Written before anyone learns of the change: what an API call
		// answered is on disk.
		if err := r.store.save(r.gen+1, r.counter, r.fleet, r.workers, keys); err != nil {
			for k, w := range u.workers {
				if w == nil {
					delete(r.workers, k)
				} else {
					r.workers[k] = w
				}
			}
			r.fleet, r.counter = u.fleet, u.counter
			r.storeErr = err
			r.storeFailures++
			if r.onStoreError != nil {
				r.onStoreError(err)
			}
			return r.gen, fmt.Errorf("%w (%s): %v", ErrStore, r.store.Path(), err)
		}
		r.storeErr = nil
	}
	r.gen++
	for ch := range r.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	return r.gen, nil
}

// View is the registry to read. Everything outside the fleet package gets
// this: only the fleet changes workers.
type View interface {
	Snapshot() Snapshot
	Get(key string) (Worker, bool)
	StoreHealth() (failures uint64, err error)
}

var _ View = (*Registry)(nil)

// StoreHealth reports how many store writes have failed since start and the
// last one's error (nil when it worked or there is no store).
func (r *Registry) StoreHealth() (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.storeFailures, r.storeErr
}

// Snapshot returns a copy of the whole fleet.
func (r *Registry) Snapshot() Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.snapshotLocked()
}

func (r *Registry) snapshotLocked() Snapshot {
	out := Snapshot{Generation: r.gen, Workers: make([]Worker, 0, len(r.workers)), Fleet: r.fleet}
	out.Fleet.History = slices.Clone(r.fleet.History)
	for _, w := range r.workers {
		out.Workers = append(out.Workers, copyWorker(*w))
	}
	slices.SortFunc(out.Workers, func(a, b Worker) int { return strings.Compare(a.Key(), b.Key()) })
	return out
}

func copyWorker(w Worker) Worker {
	w.Caps.TaskTypes = slices.Clone(w.Caps.TaskTypes)
	w.Caps.ModelIDs = slices.Clone(w.Caps.ModelIDs)
	w.Caps.Models = slices.Clone(w.Caps.Models)
	return w
}

// Get returns one worker by its canonical URL.
func (r *Registry) Get(key string) (Worker, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	w, ok := r.workers[key]
	if !ok {
		return Worker{}, false
	}
	return copyWorker(*w), true
}

// AddResult says what Add did.
type AddResult struct {
	Worker     Worker
	Created    bool
	Generation uint64
	// SameServer is set when the URL was new but names a server already
	// registered under another URL (Worker is that one).
	SameServer bool
}

// ServerIdentity is what makes two worker URLs one worker: the scheme and
// the address and port Envoy connects to. localhost, 127.0.0.1 and [::1]
// are one machine's own loopback; other addresses count as given.
func ServerIdentity(scheme, address string, port uint32) string {
	if a, err := netip.ParseAddr(address); err == nil {
		a = a.Unmap()
		if a == netip.AddrFrom4([4]byte{127, 0, 0, 1}) || a == netip.IPv6Loopback() {
			address = "loopback"
		} else {
			address = a.String()
		}
	}
	return scheme + "://" + address + ":" + strconv.FormatUint(uint64(port), 10)
}

// FindServer returns the registered worker whose server is the one at
// scheme, address and port, if any.
func (r *Registry) FindServer(scheme, address string, port uint32) (Worker, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if w := r.findServerLocked(ServerIdentity(scheme, address, port)); w != nil {
		return copyWorker(*w), true
	}
	return Worker{}, false
}

func (r *Registry) findServerLocked(id string) *Worker {
	for _, w := range r.workers {
		if ServerIdentity(w.URL.Scheme, w.Address, w.URL.Port) == id {
			return w
		}
	}
	return nil
}

// Add registers a worker in the given state, or returns the existing entry
// unchanged: adding is idempotent. Reviving a draining or quarantined worker
// is a separate decision (Move), so a re-registration from the worker's
// own side cannot bring back one that failed.
func (r *Registry) Add(u WorkerURL, address string, caps Capabilities, state State, reason string) (AddResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := u.String()
	if w, ok := r.workers[key]; ok {
		return AddResult{Worker: copyWorker(*w), Generation: r.gen}, nil
	}
	if w := r.findServerLocked(ServerIdentity(u.Scheme, address, u.Port)); w != nil {
		return AddResult{Worker: copyWorker(*w), Generation: r.gen, SameServer: true}, nil
	}
	undo := r.beginLocked(key)
	now := r.now()
	w := &Worker{URL: u, Address: address, State: state, Reason: reason, Since: now, AddedAt: now, Caps: caps,
		WeightVersion: InitialWeightVersion}
	if len(caps.ModelIDs) > 0 {
		w.ModelPath = caps.ModelIDs[0]
	}
	r.workers[key] = w
	gen, err := r.commitLocked(undo, key)
	if err != nil {
		return AddResult{Generation: gen}, fmt.Errorf("add %s: %w", key, err)
	}
	return AddResult{Worker: copyWorker(*w), Created: true, Generation: gen}, nil
}

// Move moves a worker to a state with a reason and says which state it
// left (equal to to when nothing changed). Setting the state it is already
// in with the same reason is a no-op and does not bump the generation.
// from, when not empty, makes the change conditional: it only happens while
// the worker is in one of those states (so a slow drain cannot overwrite a
// quarantine that happened meanwhile). Only the fleet package calls it.
func (r *Registry) Move(key string, to State, reason string, from ...State) (State, Worker, uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	w, ok := r.workers[key]
	if !ok {
		return "", Worker{}, r.gen, fmt.Errorf("set state of %s: %w", key, ErrNotFound)
	}
	prev := w.State
	if len(from) > 0 && !slices.Contains(from, w.State) {
		return prev, copyWorker(*w), r.gen, fmt.Errorf("set state of %s to %s: worker is %s: %w", key, to, w.State, ErrConflict)
	}
	if w.State == to && w.Reason == reason {
		return prev, copyWorker(*w), r.gen, nil
	}
	undo := r.beginLocked(key)
	w.State, w.Reason, w.Since = to, reason, r.now()
	if to == StateActive {
		w.ConsecutiveFailures = 0
	}
	gen, err := r.commitLocked(undo, key)
	if err != nil {
		return prev, copyWorker(*r.workers[key]), gen, fmt.Errorf("set state of %s to %s: %w", key, to, err)
	}
	return prev, copyWorker(*w), gen, nil
}

// ErrConflict is returned when a conditional change finds the worker in
// another state.
var ErrConflict = errors.New("worker state changed concurrently")

// mutate applies change to one worker under the lock; change reports
// whether it changed anything routing depends on (a new generation).
func (r *Registry) mutate(key, what string, change func(w *Worker) bool) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	w, ok := r.workers[key]
	if !ok {
		return r.gen, fmt.Errorf("%s of %s: %w", what, key, ErrNotFound)
	}
	undo := r.beginLocked(key)
	if !change(w) {
		return r.gen, nil
	}
	gen, err := r.commitLocked(undo, key)
	if err != nil {
		return gen, fmt.Errorf("%s of %s: %w", what, key, err)
	}
	return gen, nil
}

// SetCapabilities records what the worker reported in /v1/models.
func (r *Registry) SetCapabilities(key string, caps Capabilities) (uint64, error) {
	return r.mutate(key, "set capabilities", func(w *Worker) bool {
		if CapsEqual(w.Caps, caps) {
			return false
		}
		// A worker that never loaded weights through the router holds the
		// model it now reports.
		if w.WeightVersion == InitialWeightVersion && len(caps.ModelIDs) > 0 {
			w.ModelPath = caps.ModelIDs[0]
		}
		w.Caps = caps
		return true
	})
}

// CapsEqual reports whether two capability records say the same.
func CapsEqual(a, b Capabilities) bool {
	return a.Known == b.Known && slices.Equal(a.TaskTypes, b.TaskTypes) && slices.Equal(a.ModelIDs, b.ModelIDs) &&
		slices.EqualFunc(a.Models, b.Models, func(x, y json.RawMessage) bool { return string(x) == string(y) })
}

// SetAddress records a new resolved address for a worker given by hostname.
func (r *Registry) SetAddress(key, address string) (uint64, error) {
	return r.mutate(key, "set address", func(w *Worker) bool {
		if w.Address == address {
			return false
		}
		w.Address = address
		return true
	})
}

// RecordProbe counts a health probe result and returns the number of
// consecutive failures. It changes no routing state, so it does not bump the
// generation.
func (r *Registry) RecordProbe(key string, ok bool) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	w, found := r.workers[key]
	if !found {
		return 0, fmt.Errorf("record probe of %s: %w", key, ErrNotFound)
	}
	if ok {
		w.ConsecutiveFailures = 0
	} else {
		w.ConsecutiveFailures++
	}
	return w.ConsecutiveFailures, nil
}

// Delete removes a worker for good. from, when not empty, makes it
// conditional on the worker's state, as in SetState.
func (r *Registry) Delete(key string, from ...State) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	w, ok := r.workers[key]
	if !ok {
		return r.gen, fmt.Errorf("delete %s: %w", key, ErrNotFound)
	}
	if len(from) > 0 && !slices.Contains(from, w.State) {
		return r.gen, fmt.Errorf("delete %s: worker is %s: %w", key, w.State, ErrConflict)
	}
	undo := r.beginLocked(key)
	delete(r.workers, key)
	gen, err := r.commitLocked(undo, key)
	if err != nil {
		return gen, fmt.Errorf("delete %s: %w", key, err)
	}
	return gen, nil
}

// SetWorkerWeights records that a worker now holds a weight version. It
// changes the worker's endpoint metadata, so it bumps the generation.
func (r *Registry) SetWorkerWeights(key, version, modelPath string) (uint64, error) {
	return r.mutate(key, "set weights", func(w *Worker) bool {
		if w.WeightVersion == version && w.ModelPath == modelPath {
			return false
		}
		w.WeightVersion, w.ModelPath = version, modelPath
		return true
	})
}

// SetAsleep records that a worker released (or resumed) its memory.
func (r *Registry) SetAsleep(key string, asleep bool) (uint64, error) {
	return r.mutate(key, "set asleep", func(w *Worker) bool {
		if w.Asleep == asleep {
			return false
		}
		w.Asleep = asleep
		return true
	})
}

// MaxSlots bounds a worker's slots.
const MaxSlots = 1024

// SetSlots sets how many requests the router-owned queue lets the worker
// run at once (0: the router's default).
func (r *Registry) SetSlots(key string, slots int) (uint64, error) {
	if slots < 0 || slots > MaxSlots {
		return 0, fmt.Errorf("slots must be 0 to %d", MaxSlots)
	}
	return r.mutate(key, "set slots", func(w *Worker) bool {
		if w.Slots == slots {
			return false
		}
		w.Slots = slots
		return true
	})
}

// SetWorkersWeights records that several workers now hold a weight version,
// as one change (one store write, one xDS push): a fleet-wide update settles
// all its successes at once.
func (r *Registry) SetWorkersWeights(keys []string, version, modelPath string) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var changed []string
	for _, k := range keys {
		if w, ok := r.workers[k]; ok && (w.WeightVersion != version || w.ModelPath != modelPath) {
			changed = append(changed, k)
		}
	}
	if len(changed) == 0 {
		return r.gen, nil
	}
	undo := r.beginLocked(changed...)
	for _, k := range changed {
		r.workers[k].WeightVersion, r.workers[k].ModelPath = version, modelPath
	}
	gen, err := r.commitLocked(undo, changed...)
	if err != nil {
		return gen, fmt.Errorf("record weights %s of %d workers: %w", version, len(changed), err)
	}
	return gen, nil
}

// SetFleetWeights records the fleet's new weight version.
func (r *Registry) SetFleetWeights(wt Weights) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	undo := r.beginLocked()
	wt.UpdatedAt = r.now()
	wt.History, wt.Updating = r.fleet.History, r.fleet.Updating
	r.fleet = wt
	r.noteLocked(wt.Version)
	gen, err := r.commitLocked(undo)
	if err != nil {
		return gen, fmt.Errorf("record the fleet's weights %s: %w", wt.Version, err)
	}
	return gen, nil
}

// NextVersion returns the version for an update that names none: one more
// than the last numeric version seen.
func (r *Registry) NextVersion() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.counter++
	return strconv.Itoa(r.counter)
}

// NoteVersion tells the counter about a version the caller chose, so that
// numeric ones are not handed out again.
func (r *Registry) NoteVersion(v string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n, err := strconv.Atoi(v); err == nil && n > r.counter {
		r.counter = n
	}
}
