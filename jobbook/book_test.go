package jobbook

import (
	"fmt"
	"maps"
	"sync"
	"testing"
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
