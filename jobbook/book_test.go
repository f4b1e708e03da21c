package jobbook

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestBook(t *testing.T) {
	b := New(3)
	b.Record("w1", "a", "0")
	b.Record("w1", "b", "0")
	b.Record("w2", "a", "1")
	for _, tc := range []struct {
		worker string
		ids    []string
		want   map[string]string
	}{
		{"w1", []string{"a", "b", "c"}, map[string]string{"a": "0", "b": "0"}},
		{"w2", []string{"a", "b"}, map[string]string{"a": "1"}},
		{"w3", []string{"a"}, map[string]string{}},
		{"w1", nil, map[string]string{}},
	} {
		if got := b.Versions(tc.worker, tc.ids); !maps.Equal(got, tc.want) {
			t.Errorf("Versions(%s, %v) = %v, want %v", tc.worker, tc.ids, got, tc.want)
		}
	}
	// Recorded again: changed in place, nothing evicted.
	b.Record("w1", "a", "2")
	if got := b.Versions("w1", []string{"a", "b"}); got["a"] != "2" || got["b"] != "0" || b.Len() != 3 {
		t.Fatalf("after re-recording: %v, %d held", got, b.Len())
	}
	// Full: the oldest record goes first.
	b.Record("w1", "d", "3")
	if got := b.Versions("w1", []string{"a", "b", "d"}); !maps.Equal(got, map[string]string{"b": "0", "d": "3"}) || b.Len() != 3 {
		t.Fatalf("after eviction: %v, %d held", got, b.Len())
	}
}

func TestBookConcurrent(t *testing.T) {
	b := New(100)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				id := fmt.Sprint(g, "-", i)
				b.Record("w", id, "v")
				_ = b.Versions("w", []string{id})
			}
		}()
	}
	wg.Wait()
	if b.Len() != 100 {
		t.Fatalf("held %d, want the capacity 100", b.Len())
	}
}

// TestOpenJobs: a worker's jobs not known to have ended, oldest first and
// bounded; an ended job and those recorded before since leave the list.
func TestOpenJobs(t *testing.T) {
	now := time.Unix(1000, 0)
	b := New(16)
	b.now = func() time.Time { return now }
	for _, id := range []string{"a", "b", "c", "d"} {
		b.Record("w1", id, "v1")
		now = now.Add(time.Second)
	}
	b.Record("w2", "x", "v1")
	if got := b.Open("w1", time.Time{}, 3); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("open %v, want a b c", got)
	}
	b.Ended("w1", "b")
	b.Record("w1", "a", "v2") // recorded again: still one job
	if got := b.Open("w1", time.Time{}, 10); !slices.Equal(got, []string{"a", "c", "d"}) {
		t.Fatalf("after b ended: %v, want a c d", got)
	}
	if got := b.Open("w1", time.Unix(1002, 0), 10); !slices.Equal(got, []string{"c", "d"}) {
		t.Fatalf("since 1002: %v, want c d", got)
	}
	if got := b.Open("w2", time.Time{}, 10); !slices.Equal(got, []string{"x"}) {
		t.Fatalf("another worker: %v", got)
	}
	b.Ended("w2", "x")
	if got := b.Open("w2", time.Time{}, 10); len(got) != 0 {
		t.Fatalf("after its only job ended: %v", got)
	}
}
