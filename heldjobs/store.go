package heldjobs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// State is where a held job is.
type State string

const (
	// Waiting: stored, in the router's queue.
	Waiting State = "waiting"
	// Sending: granted a worker, its create on the way. A job found in
	// this state at start may have reached its worker: it is sent again
	// and counted (Stats.Resent).
	Sending State = "sending"
	// Sent: its worker took it; calls about it go to the worker.
	Sent State = "sent"
	// Failed: it never ran (its wait passed --queue-timeout, or its
	// worker refused it).
	Failed State = "failed"
	// Deleted: deleted while it waited; no worker saw it.
	Deleted State = "deleted"
)

// open reports whether a job in state s is still the router's: waiting,
// or being sent (its body stored, counted against --max-held-bytes).
func (s State) open() bool { return s == Waiting || s == Sending }

// Job is one held video job as stored.
type Job struct {
	// ID is the router's own id of the job (the client sees it signed).
	ID     string              `json:"id"`
	Path   string              `json:"path"`
	Header map[string][]string `json:"header"`
	Bytes  int64               `json:"bytes"`
	State  State               `json:"state"`
	// Object is the job as a queued worker answer shows it (object.go).
	Object   Object    `json:"object"`
	Created  time.Time `json:"created"`
	Priority int       `json:"priority"`
	Tenant   string    `json:"tenant"`
	Cost     int64     `json:"cost"`
	Model    string    `json:"model,omitempty"`
	// Version and MinVersion are its weight-version rules.
	Version    string `json:"weight_version,omitempty"`
	MinVersion string `json:"min_weight_version,omitempty"`
	Group      string `json:"group,omitempty"`
	// Sends counts the creates sent for it (more than one only after a
	// crash while sending, or a send that failed before any worker took
	// it).
	Sends int `json:"sends,omitempty"`
	// Once sent: the worker's id as its Envoy signed it, the worker, and
	// when.
	Wrapped string    `json:"wrapped,omitempty"`
	Worker  string    `json:"worker,omitempty"`
	SentAt  time.Time `json:"sent_at,omitzero"`
	// Error says why a failed job never ran: its code and message.
	ErrorCode string    `json:"error_code,omitempty"`
	Error     string    `json:"error,omitempty"`
	Ended     time.Time `json:"ended,omitzero"`
}

var bucket = []byte("jobs")

// store keeps held jobs on disk: records in a bbolt file, bodies as files
// of their own (megabytes for image-to-video), each written and synced
// before its record, so a record never names a body that is not there.
type store struct {
	db     *bolt.DB
	bodies string
}

func openStore(dir string) (*store, error) {
	bodies := filepath.Join(dir, "bodies")
	if err := os.MkdirAll(bodies, 0o700); err != nil {
		return nil, fmt.Errorf("held jobs: %w", err)
	}
	db, err := bolt.Open(filepath.Join(dir, "held.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("held jobs: open %s: %w", dir, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucket)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("held jobs: %w", err)
	}
	return &store{db: db, bodies: bodies}, nil
}

func (s *store) close() error { return s.db.Close() }

// load returns every stored job and removes bodies no record names (a
// crash between writing a body and its record).
func (s *store) load() ([]*Job, error) {
	var jobs []*Job
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(_, v []byte) error {
			j := &Job{}
			if err := json.Unmarshal(v, j); err != nil {
				return fmt.Errorf("held jobs: a stored record: %w", err)
			}
			jobs = append(jobs, j)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	named := map[string]bool{}
	for _, j := range jobs {
		named[j.ID] = true
	}
	entries, err := os.ReadDir(s.bodies)
	if err != nil {
		return nil, fmt.Errorf("held jobs: %w", err)
	}
	for _, e := range entries {
		if !named[strings.TrimSuffix(e.Name(), ".tmp")] || strings.HasSuffix(e.Name(), ".tmp") {
			_ = os.Remove(filepath.Join(s.bodies, e.Name()))
		}
	}
	return jobs, nil
}

// writeBody stores a body of at most limit bytes; it returns its size, or
// errTooLarge past the limit.
func (s *store) writeBody(id string, r io.Reader, limit int64) (int64, error) {
	tmp := filepath.Join(s.bodies, id+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, fmt.Errorf("held jobs: %w", err)
	}
	n, err := io.Copy(f, io.LimitReader(r, limit+1))
	if err == nil && n > limit {
		err = errTooLarge
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.bodyPath(id))
	}
	if err == nil {
		// The rename itself, so a record written next never names a
		// body a power cut took back.
		err = syncDir(s.bodies)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return n, err
	}
	return n, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (s *store) bodyPath(id string) string { return filepath.Join(s.bodies, id) }

func (s *store) removeBody(id string) { _ = os.Remove(s.bodyPath(id)) }

// put writes a job's record (synced).
func (s *store) put(j *Job) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	// Batch: concurrent creates share one synced transaction.
	if err := s.db.Batch(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(j.ID), b) }); err != nil {
		return fmt.Errorf("held jobs: store %s: %w", j.ID, err)
	}
	return nil
}

// drop forgets a job.
func (s *store) drop(id string) error {
	s.removeBody(id)
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete([]byte(id)) })
}

var errTooLarge = errors.New("body too large")
