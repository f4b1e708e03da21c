package api

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/wire"
)

// TestStalledQuarantines: a filter's signed stall report quarantines the
// worker it names (cause stalled, the reason saying how long the request
// ran); bad or unsigned reports change nothing; a second report of the
// same worker is answered without quarantining again.
func TestStalledQuarantines(t *testing.T) {
	s, reg := newAPI(t)
	s.SyncSecret = []byte(syncSecret)
	w := worker(t, "T2I")
	if code, v := call(t, s, "POST", "/add_worker", `{"url":"`+w.URL+`"}`); code != http.StatusOK {
		t.Fatalf("add_worker = %d %v", code, v)
	}
	u, _ := url.Parse(w.URL)
	post := func(secret, body string) (int, map[string]any) {
		t.Helper()
		return signedPostAt(t, s, wire.PathStalled, secret, body, time.Now().UnixMilli(), "application/json")
	}
	good := `{"node":"envoy-1","worker":"` + u.Host + `","ran_ms":301000,"expected_ms":30000}`
	for _, tt := range []struct {
		name, secret, body string
		want               int
	}{
		{"unsigned", "another secret entirely", good, http.StatusUnauthorized},
		{"not JSON", syncSecret, `{"node":`, http.StatusBadRequest},
		{"no worker", syncSecret, `{"node":"n","ran_ms":5}`, http.StatusBadRequest},
		{"no time", syncSecret, `{"node":"n","worker":"` + u.Host + `"}`, http.StatusBadRequest},
		{"unknown worker", syncSecret, `{"node":"n","worker":"10.9.9.9:1","ran_ms":5}`, http.StatusNotFound},
	} {
		if code, v := post(tt.secret, tt.body); code != tt.want || v["error"] == nil {
			t.Errorf("%s: %d %v, want %d with an error", tt.name, code, v, tt.want)
		}
	}
	if wk, _ := reg.Get(w.URL); wk.State != registry.StateActive {
		t.Fatalf("bad reports changed the worker: %s", wk.State)
	}
	if code, v := post(syncSecret, good); code != http.StatusOK || v["quarantined"] != true {
		t.Fatalf("stall report = %d %v", code, v)
	}
	wk, _ := reg.Get(w.URL)
	if wk.State != registry.StateQuarantined || !strings.Contains(wk.Reason, "301.0 s") {
		t.Fatalf("after the report: %s %q", wk.State, wk.Reason)
	}
	if code, v := post(syncSecret, good); code != http.StatusOK || v["quarantined"] != false {
		t.Fatalf("second report = %d %v", code, v)
	}
}
