package jobid

import (
	"strings"
	"testing"
)

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

func TestVersionedRefs(t *testing.T) {
	s := NewSigner([]byte("secret"))
	key := WorkerKey("http://127.0.0.1:30000")
	for _, r := range []Ref{
		{ID: "video_abc", Worker: key, Version: "1"},
		{ID: "video_abc", Worker: key, Version: "step-00042/ckpt.v2?#%"},
		{ID: "a.b-c", Worker: key, Version: "~"},
		{ID: "video_abc", Worker: key},
	} {
		w := s.WrapRef(r)
		if strings.ContainsAny(w, "/?#% ") {
			t.Errorf("WrapRef(%+v) = %q: not URL-safe", r, w)
		}
		got, ok := s.UnwrapRef(w)
		if !ok || got != r {
			t.Errorf("UnwrapRef(WrapRef(%+v)) = %+v %v", r, got, ok)
		}
	}
	v1 := s.WrapRef(Ref{ID: "video_abc", Worker: key, Version: "1"})
	v2 := s.WrapRef(Ref{ID: "video_abc", Worker: key, Version: "2"})
	plain := s.Wrap("video_abc", key)
	mac := func(w string) string { return w[strings.LastIndex(w, ".")+1:] }
	seg := func(w string) string { parts := strings.Split(w, "."); return parts[len(parts)-2] }
	for name, forged := range map[string]string{
		"version swapped, MAC kept":           "video_abc." + seg(v2) + "." + mac(v1),
		"version added to a versionless id":   "video_abc." + seg(v1) + "." + mac(plain),
		"version dropped from a versioned id": "video_abc." + key + "." + mac(v1),
		"version not base64":                  "video_abc." + key + "-!!." + mac(v1),
		"empty version":                       "video_abc." + key + "-." + mac(plain),
		"key too short":                       "video_abc." + key[:15] + "-MQ." + mac(v1),
	} {
		if r, ok := s.UnwrapRef(forged); ok {
			t.Errorf("%s: UnwrapRef(%q) accepted as %+v", name, forged, r)
		}
	}
}
