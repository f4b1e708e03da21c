package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// StoreFile is the registry's file in the state directory.
const StoreFile = "registry.db"

var (
	bucketWorkers = []byte("workers")
	bucketMeta    = []byte("meta")
	keyFleet      = []byte("fleet")
	keyCounter    = []byte("counter")
	keyGeneration = []byte("generation")
	keyEpoch      = []byte("epoch")
)

// Store keeps the registry on disk (bbolt): every change is written in one
// transaction, so the file always holds one whole, consistent state.
type Store struct {
	db *bolt.DB
}

// storedWorker is a worker as written to disk.
type storedWorker struct {
	URL                 string            `json:"url"`
	Address             string            `json:"address"`
	State               State             `json:"state"`
	Reason              string            `json:"reason"`
	Since               time.Time         `json:"since"`
	AddedAt             time.Time         `json:"added_at"`
	Known               bool              `json:"caps_known"`
	TaskTypes           []string          `json:"task_types"`
	ModelIDs            []string          `json:"models"`
	Models              []json.RawMessage `json:"model_entries"`
	ConsecutiveFailures int               `json:"consecutive_failures"`
	WeightVersion       string            `json:"weight_version"`
	ModelPath           string            `json:"model_path"`
	Asleep              bool              `json:"asleep"`
	Slots               int               `json:"slots,omitempty"`
}

type storedFleet struct {
	Weights
	Request map[string]any `json:"request"`
}

// OpenStore opens (or creates) the store in dir. A file that cannot be read
// is an error, never silently replaced: the caller stops.
func OpenStore(dir string) (st *Store, err error) {
	path := filepath.Join(dir, StoreFile)
	// A file that exists but is empty was damaged (a store is never empty
	// once created): bbolt would quietly start a new one in its place.
	if fi, statErr := os.Stat(path); statErr == nil && fi.Size() == 0 {
		return nil, fmt.Errorf("registry store %s is empty (damaged; move it away to start empty)", path)
	}
	// bbolt panics on some damaged pages, and reading a page past the end
	// of a truncated file faults in the memory map; both are a damaged
	// store too. (The fault becomes a panic for this goroutine only.)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			st, err = nil, fmt.Errorf("registry store %s is corrupt (move it away to start empty): %v", path, p)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("registry store %s is locked by another process (is another control plane using this --state-dir?)", path)
		}
		return nil, fmt.Errorf("registry store %s cannot be opened (corrupt or not a registry store; move it away to start empty): %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketWorkers, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("registry store %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Path is the store's file.
func (s *Store) Path() string { return s.db.Path() }

// Close releases the file.
func (s *Store) Close() error { return s.db.Close() }

// NextEpoch counts control-plane starts on this store; it prefixes xDS
// versions, so that a restarted control plane serves even an unchanged
// configuration under a newer version.
func (s *Store) NextEpoch() (uint64, error) {
	var epoch uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if v := b.Get(keyEpoch); v != nil {
			n, err := strconv.ParseUint(string(v), 10, 64)
			if err != nil {
				return fmt.Errorf("epoch %q: %w", v, err)
			}
			epoch = n
		}
		epoch++
		return b.Put(keyEpoch, []byte(strconv.FormatUint(epoch, 10)))
	})
	return epoch, err
}

// save writes the workers named by keys (or deletes those that left) and
// the fleet's data, in one transaction. Caller holds the registry's lock.
func (s *Store) save(gen uint64, counter int, fleet Weights, workers map[string]*Worker, keys []string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		wb := tx.Bucket(bucketWorkers)
		for _, key := range keys {
			w, ok := workers[key]
			if !ok {
				if err := wb.Delete([]byte(key)); err != nil {
					return err
				}
				continue
			}
			b, err := json.Marshal(storedWorker{
				URL: key, Address: w.Address, State: w.State, Reason: w.Reason, Since: w.Since, AddedAt: w.AddedAt,
				Known: w.Caps.Known, TaskTypes: w.Caps.TaskTypes, ModelIDs: w.Caps.ModelIDs, Models: w.Caps.Models,
				ConsecutiveFailures: w.ConsecutiveFailures, WeightVersion: w.WeightVersion, ModelPath: w.ModelPath, Asleep: w.Asleep,
				Slots: w.Slots,
			})
			if err != nil {
				return err
			}
			if err := wb.Put([]byte(key), b); err != nil {
				return err
			}
		}
		mb := tx.Bucket(bucketMeta)
		fb, err := json.Marshal(storedFleet{Weights: fleet, Request: fleet.Request})
		if err != nil {
			return err
		}
		for k, v := range map[string][]byte{string(keyFleet): fb, string(keyCounter): []byte(strconv.Itoa(counter)),
			string(keyGeneration): []byte(strconv.FormatUint(gen, 10))} {
			if err := mb.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
}

// load reads what save wrote. Anything that does not decode is an error.
func (s *Store) load() (gen uint64, counter int, fleet Weights, workers map[string]*Worker, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("registry store %s is corrupt (move it away to start empty): %v", s.db.Path(), p)
		}
	}()
	workers = map[string]*Worker{}
	err = s.db.View(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketWorkers).ForEach(func(k, v []byte) error {
			var sw storedWorker
			if err := json.Unmarshal(v, &sw); err != nil {
				return fmt.Errorf("worker %q: %w", k, err)
			}
			u, err := ParseWorkerURL(string(k))
			if err != nil || u.String() != string(k) {
				return fmt.Errorf("worker key %q is not a canonical worker URL", k)
			}
			switch sw.State {
			case StatePending, StateActive, StateDraining, StateQuarantined, StateUpdating:
			default:
				return fmt.Errorf("worker %q: unknown state %q", k, sw.State)
			}
			workers[string(k)] = &Worker{URL: u, Address: sw.Address, State: sw.State, Reason: sw.Reason, Since: sw.Since,
				AddedAt: sw.AddedAt, Caps: Capabilities{Known: sw.Known, TaskTypes: sw.TaskTypes, ModelIDs: sw.ModelIDs, Models: sw.Models},
				ConsecutiveFailures: sw.ConsecutiveFailures, WeightVersion: sw.WeightVersion, ModelPath: sw.ModelPath, Asleep: sw.Asleep,
				Slots: sw.Slots}
			return nil
		}); err != nil {
			return err
		}
		mb := tx.Bucket(bucketMeta)
		if v := mb.Get(keyFleet); v != nil {
			var sf storedFleet
			if err := json.Unmarshal(v, &sf); err != nil {
				return fmt.Errorf("fleet weights: %w", err)
			}
			fleet = sf.Weights
			fleet.Request = sf.Request
		}
		if v := mb.Get(keyCounter); v != nil {
			n, err := strconv.Atoi(string(v))
			if err != nil {
				return fmt.Errorf("version counter %q: %w", v, err)
			}
			counter = n
		}
		if v := mb.Get(keyGeneration); v != nil {
			n, err := strconv.ParseUint(string(v), 10, 64)
			if err != nil {
				return fmt.Errorf("generation %q: %w", v, err)
			}
			gen = n
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("registry store %s is corrupt (move it away to start empty): %w", s.db.Path(), err)
	}
	return gen, counter, fleet, workers, err
}

// Persist makes the registry write every change to the store, after first
// loading what the store holds. A write that fails is reported through
// onError, and the change is undone: callers get ErrStore.
func (r *Registry) Persist(s *Store, onError func(error)) error {
	gen, counter, fleet, workers, err := s.load()
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(workers) > 0 || fleet.Version != "" {
		r.workers, r.fleet, r.counter = workers, fleet, counter
		// Continue after the stored generation, so versions only grow.
		r.gen = gen
	}
	r.store, r.onStoreError = s, onError
	return nil
}
