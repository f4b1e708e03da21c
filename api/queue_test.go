package api

import (
	"net/http"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/queue"
	"github.com/diffrouter/diffusion-router/wire"
)

// TestQueueEndpoints: the filters' queue calls are signed; bad ones are
// refused with a JSON error and queue nothing; a waiting request is
// answered 429 when the queue is full, taken out by a cancel, and shown
// at GET /queue.
func TestQueueEndpoints(t *testing.T) {
	s, _ := newAPI(t)
	post := func(path, secret, body string) (int, map[string]any) {
		t.Helper()
		return signedPostAt(t, s, path, secret, body, time.Now().UnixMilli(), "application/json")
	}
	req := `{"node":"envoy-1","ticket":"t1","priority":2,"tenant":"trainer","cost":10,"pool":1}`
	if code, v := post(wire.PathQueue, syncSecret, req); code != http.StatusNotFound || v["error"] == nil {
		t.Fatalf("queue call with the queue off = %d %v", code, v)
	}
	if code, _ := call(t, s, "GET", wire.PathQueueStatus, ""); code != http.StatusNotFound {
		t.Fatalf("GET /queue with the queue off = %d", code)
	}
	s.Queue = queue.New(queue.Options{MaxQueued: 1})
	s.SyncSecret = []byte(syncSecret)
	for _, tt := range []struct {
		name, secret, body string
		want               int
	}{
		{"unsigned", "another secret entirely", req, http.StatusUnauthorized},
		{"not JSON", syncSecret, `{"node":`, http.StatusBadRequest},
		{"unknown field", syncSecret, `{"node":"n","ticket":"t","tenant":"a","x":1}`, http.StatusBadRequest},
		{"priority out of range", syncSecret, `{"node":"n","ticket":"t","tenant":"a","priority":5000}`, http.StatusBadRequest},
		{"bad tenant", syncSecret, `{"node":"n","ticket":"t","tenant":"a b"}`, http.StatusBadRequest},
		{"no ticket", syncSecret, `{"node":"n","tenant":"a"}`, http.StatusBadRequest},
		{"negative cost", syncSecret, `{"node":"n","ticket":"t","tenant":"a","cost":-1}`, http.StatusBadRequest},
		{"bad pool", syncSecret, `{"node":"n","ticket":"t","tenant":"a","pool":9}`, http.StatusBadRequest},
	} {
		if code, v := post(wire.PathQueue, tt.secret, tt.body); code != tt.want || v["error"] == nil {
			t.Errorf("%s: %d %v, want %d with an error", tt.name, code, v, tt.want)
		}
	}
	if n := s.Queue.Waiting(); n != 0 {
		t.Fatalf("refused calls queued %d requests", n)
	}
	// One request waits (no fleet grants it here); a second is refused:
	// the queue holds one.
	done := make(chan int, 1)
	go func() { code, _ := post(wire.PathQueue, syncSecret, req); done <- code }()
	for deadline := time.Now().Add(5 * time.Second); s.Queue.Waiting() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first request never queued")
		}
	}
	code, v := post(wire.PathQueue, syncSecret, `{"node":"envoy-1","ticket":"t2","tenant":"trainer","cost":10}`)
	if code != http.StatusTooManyRequests || v["error"] == nil {
		t.Fatalf("over --max-queued = %d %v", code, v)
	}
	code, st := call(t, s, "GET", wire.PathQueueStatus, "")
	if code != http.StatusOK || st["waiting"].(float64) != 1 || st["refused"].(float64) != 1 {
		t.Fatalf("GET /queue = %d %v", code, st)
	}
	if code, v := post(wire.PathQueueCancel, syncSecret, `{"node":"envoy-1"}`); code != http.StatusBadRequest {
		t.Fatalf("cancel without a ticket = %d %v", code, v)
	}
	if code, v := post(wire.PathQueueCancel, syncSecret, `{"node":"envoy-1","ticket":"t1"}`); code != http.StatusOK || v["cancelled"] != true {
		t.Fatalf("cancel = %d %v", code, v)
	}
	if code := <-done; code != http.StatusConflict {
		t.Fatalf("the cancelled wait answered %d", code)
	}
	if code, v := post(wire.PathQueueCancel, syncSecret, `{"node":"envoy-1","ticket":"t1"}`); code != http.StatusOK || v["cancelled"] != false {
		t.Fatalf("second cancel = %d %v", code, v)
	}
}

// TestAddWorkerSlots: add_worker takes a worker's own slots (a worker that
// batches); a bad value is refused before anything is registered.
func TestAddWorkerSlots(t *testing.T) {
	s, _ := newAPI(t)
	w := worker(t, "T2I")
	for _, bad := range []string{`{"url":"` + w.URL + `","slots":0}`, `{"url":"` + w.URL + `","slots":"4"}`, `{"url":"` + w.URL + `","slots":5000}`} {
		if code, v := call(t, s, "POST", "/add_worker", bad); code != http.StatusBadRequest || v["error"] == nil {
			t.Fatalf("add %s = %d %v", bad, code, v)
		}
	}
	if n := len(s.Fleet.Registry().Snapshot().Workers); n != 0 {
		t.Fatalf("refused adds registered %d workers", n)
	}
	code, v := call(t, s, "POST", "/add_worker", `{"url":"`+w.URL+`","slots":4}`)
	if code != http.StatusOK || v["worker"].(map[string]any)["slots"] != float64(4) {
		t.Fatalf("add with slots = %d %v", code, v)
	}
	if wk := s.Fleet.Registry().Snapshot().Workers[0]; wk.Slots != 4 {
		t.Fatalf("registry slots %d", wk.Slots)
	}
}
