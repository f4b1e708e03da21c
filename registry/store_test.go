package registry

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestStoreRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := New(nil)
	if err := r.Persist(s, func(err error) { t.Errorf("store: %v", err) }); err != nil {
		t.Fatal(err)
	}
	a := mustAdd(t, r, mustURL(t, "http://10.0.0.1:1"), "10.0.0.1", Capabilities{Known: true, TaskTypes: []string{"T2V"}, ModelIDs: []string{"wan"}}, StateActive, "")
	mustAdd(t, r, mustURL(t, "http://10.0.0.2:1"), "10.0.0.2", Capabilities{}, StateActive, "")
	mustAdd(t, r, mustURL(t, "http://10.0.0.3:1"), "10.0.0.3", Capabilities{}, StateActive, "")
	if _, err := r.Delete("http://10.0.0.3:1"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.setState("http://10.0.0.2:1", StateQuarantined, "weight update failed"); err != nil {
		t.Fatal(err)
	}
	r.NoteVersion("7")
	r.SetFleetWeights(Weights{Version: "7", ModelPath: "/ckpt/7", Request: map[string]any{"model_path": "/ckpt/7", "flush_cache": true}})
	if _, err := r.SetWorkerWeights(a.Worker.Key(), "7", "/ckpt/7"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetSlots(a.Worker.Key(), 4); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetSlots(a.Worker.Key(), MaxSlots+1); err == nil {
		t.Fatal("slots over the bound were set")
	}
	before := r.Snapshot()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	r2, s2 := persisted(t, dir)
	defer s2.Close()
	after := r2.Snapshot()
	if after.Generation != before.Generation || len(after.Workers) != 2 {
		t.Fatalf("restored gen %d with %d workers, want gen %d with 2", after.Generation, len(after.Workers), before.Generation)
	}
	for i := range before.Workers {
		b, a := before.Workers[i], after.Workers[i]
		if b.Key() != a.Key() || b.State != a.State || b.Reason != a.Reason || b.WeightVersion != a.WeightVersion ||
			!b.Since.Equal(a.Since) || b.Caps.Video() != a.Caps.Video() || b.ModelPath != a.ModelPath || b.Slots != a.Slots {
			t.Fatalf("worker %d: %+v, restored %+v", i, b, a)
		}
	}
	if after.Fleet.Version != "7" || after.Fleet.Request["flush_cache"] != true {
		t.Fatalf("fleet = %+v", after.Fleet)
	}
	if v := r2.NextVersion(); v != "8" {
		t.Fatalf("next version after restore = %s, want 8", v)
	}
	e1, _ := s2.NextEpoch()
	e2, _ := s2.NextEpoch()
	if e2 != e1+1 {
		t.Fatalf("epochs %d, %d", e1, e2)
	}
}

func TestStoreRefusesCorruptOrLocked(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, StoreFile), []byte(strings.Repeat("not a database ", 500)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenStore(dir); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt store: %v", err)
	}
	dir2 := t.TempDir()
	s, err := OpenStore(dir2)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := OpenStore(dir2); err == nil || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("second open: %v", err)
	}
}

// A change the store cannot write is refused and undone: memory and disk
// never disagree, and the store's health says so.
func TestStoreFailureUndoesTheChange(t *testing.T) {
	r, s := persisted(t, t.TempDir())
	a := mustAdd(t, r, mustURL(t, "http://10.0.0.1:1"), "10.0.0.1", Capabilities{}, StateActive, "")
	before := r.Snapshot()
	s.Close() // every later write fails

	checks := []struct {
		name   string
		change func() error
	}{
		{"add", func() error {
			_, err := r.Add(mustURL(t, "http://10.0.0.2:1"), "10.0.0.2", Capabilities{}, StateActive, "")
			return err
		}},
		{"quarantine", func() error {
			_, _, err := r.setState(a.Worker.Key(), StateQuarantined, "x")
			return err
		}},
		{"delete", func() error { _, err := r.Delete(a.Worker.Key()); return err }},
		{"weights", func() error { _, err := r.SetWorkerWeights(a.Worker.Key(), "9", "/ckpt/9"); return err }},
		{"fleet weights", func() error { _, err := r.SetFleetWeights(Weights{Version: "9"}); return err }},
		{"many weights", func() error { _, err := r.SetWorkersWeights([]string{a.Worker.Key()}, "9", "/ckpt/9"); return err }},
	}
	for _, c := range checks {
		if err := c.change(); !errors.Is(err, ErrStore) {
			t.Fatalf("%s with a failing store: %v, want ErrStore", c.name, err)
		}
		after := r.Snapshot()
		if after.Generation != before.Generation || len(after.Workers) != 1 || after.Workers[0].State != StateActive ||
			after.Workers[0].WeightVersion != InitialWeightVersion || after.Fleet.Version != "" {
			t.Fatalf("%s changed the registry although the store refused it: %+v", c.name, after)
		}
	}
	if n, err := r.StoreHealth(); err == nil || n != uint64(len(checks)) {
		t.Fatalf("store health = %v, %d failures; want an error and %d", err, n, len(checks))
	}
}

// Every kind of damage is an error naming the file, never a panic and
// never a silently empty registry.
func TestStoreDamageIsAnError(t *testing.T) {
	// A real store with workers in it, to damage in different ways.
	good := t.TempDir()
	r, s := persisted(t, good)
	for i := range 50 {
		mustAdd(t, r, mustURL(t, "http://10.1.0."+strconv.Itoa(i+1)+":1"), "10.1.0."+strconv.Itoa(i+1), Capabilities{}, StateActive, "")
	}
	s.Close()
	orig, err := os.ReadFile(filepath.Join(good, StoreFile))
	if err != nil {
		t.Fatal(err)
	}
	damage := map[string]func([]byte) []byte{
		"empty file": func([]byte) []byte { return nil },
		"truncated":  func(b []byte) []byte { return b[:len(b)/3] },
		"scrambled data pages": func(b []byte) []byte {
			c := append([]byte(nil), b...)
			for i := 4 * 4096; i < len(c); i++ {
				c[i] ^= byte(i*131 + 7)
			}
			return c
		},
		"scrambled meta pages": func(b []byte) []byte {
			c := append([]byte(nil), b...)
			for i := 0; i < 2*4096 && i < len(c); i++ {
				c[i] ^= 0x5a
			}
			return c
		},
	}
	for name, f := range damage {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, StoreFile)
			if err := os.WriteFile(path, f(orig), 0o600); err != nil {
				t.Fatal(err)
			}
			st, err := OpenStore(dir)
			if err == nil {
				err = New(nil).Persist(st, nil)
				st.Close()
			}
			if err == nil || !strings.Contains(err.Error(), path) {
				t.Fatalf("damaged store (%s) opened: %v", name, err)
			}
		})
	}
}

// persisted is a registry that writes to a new store in dir.
func persisted(t *testing.T, dir string) (*Registry, *Store) {
	t.Helper()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := New(nil)
	if err := r.Persist(s, nil); err != nil {
		t.Fatal(err)
	}
	return r, s
}
