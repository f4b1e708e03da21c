package jobid

import "testing"

func TestWrapUnwrap(t *testing.T) {
	s := NewSigner([]byte("secret"))
	key := WorkerKey("http://127.0.0.1:30000")
	if len(key) != 16 || key != WorkerKey("http://127.0.0.1:30000") || key == WorkerKey("http://127.0.0.1:30001") {
		t.Fatalf("worker keys not stable and distinct: %q", key)
	}
	for _, id := range []string{"video_abc", "img_1_0", "a.b.c"} {
		w := s.Wrap(id, key)
		gotID, gotKey, ok := s.Unwrap(w)
		if !ok || gotID != id || gotKey != key {
			t.Fatalf("Unwrap(Wrap(%q)) = %q %q %v", id, gotID, gotKey, ok)
		}
	}
	good := s.Wrap("video_abc", key)
	other := NewSigner([]byte("other"))
	bad := []string{
		"", "video_abc", "video_abc." + key, good + "x", "x" + good[1:],
		"video_abd" + good[len("video_abc"):], // id changed, MAC kept
		other.Wrap("video_abc", key),          // another router's secret
		"video_abc.0123456789abcdef." + good[len(good)-16:],
	}
	for _, b := range bad {
		if _, _, ok := s.Unwrap(b); ok {
			t.Errorf("Unwrap(%q) accepted a forged id", b)
		}
	}
}
