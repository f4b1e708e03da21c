package api

import (
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/loadboard"
	"github.com/diffrouter/diffusion-router/wire"
)

// TestFilterSync: a filter's report comes back as a view of the eligible
// workers, its work shows on GET /workers, and bad reports change nothing.
func TestFilterSync(t *testing.T) {
	s, _ := newAPI(t)
	if code, v := signedSync(t, s, syncSecret, `{"node":"a"}`); code != 404 {
		t.Fatalf("sync with least-work off = %d %v", code, v)
	}
	s.Board = loadboard.New(loadboard.Options{})
	if code, v := signedSync(t, s, syncSecret, `{"node":"a"}`); code != 500 || v["error"] == nil {
		t.Fatalf("sync with no secret configured = %d %v", code, v)
	}
	s.SyncSecret = []byte(syncSecret)
	s.AdminToken = "secret-token-1234"
	w := worker(t, "T2I")
	if code, v := call(t, s, "POST", "/add_worker?url="+url.QueryEscape(w.URL), ""); code != 401 {
		t.Fatalf("add without the token = %d %v", code, v)
	}
	s.AdminToken = ""
	if code, v := call(t, s, "POST", "/add_worker?url="+url.QueryEscape(w.URL), ""); code != 200 {
		t.Fatalf("add = %d %v", code, v)
	}
	addr := w.URL[len("http://"):]
	s.AdminToken = "secret-token-1234" // the filters hold no token
	report := `{"node":"envoy-1","generation":0,"hosts":[{"addr":"` + addr + `","work":150,"requests":3,"ms_per_cost":2,"samples":4}]}`
	// Only a report signed with the job-id secret counts.
	if code, v := call(t, s, "POST", wire.PathFilterSync, report); code != 401 || v["error"] == nil {
		t.Fatalf("unsigned sync = %d %v", code, v)
	}
	if code, v := signedSync(t, s, "not the router's secret", report); code != 401 || v["error"] == nil {
		t.Fatalf("sync signed with another secret = %d %v", code, v)
	}
	if n := s.Board.Nodes(); n != 0 {
		t.Fatalf("refused syncs were recorded: %d nodes", n)
	}
	code, v := signedSync(t, s, syncSecret, report)
	if code != 200 {
		t.Fatalf("sync = %d %v", code, v)
	}
	ws, _ := v["workers"].([]any)
	if len(ws) != 1 || ws[0].(map[string]any)["addr"] != addr || v["generation"].(float64) == 0 {
		t.Fatalf("view = %v", v)
	}
	if ws[0].(map[string]any)["remote_work"] != nil {
		t.Fatalf("an Envoy's own work came back as remote: %v", ws[0])
	}
	_, list := call(t, s, "GET", "/workers", "")
	wk := list["workers"].([]any)[0].(map[string]any)
	if wk["outstanding_work"].(float64) != 150 || wk["outstanding_requests"].(float64) != 3 || wk["ms_per_cost"] != float64(0) {
		t.Fatalf("GET /workers shows %v", wk)
	}
	for _, bad := range []string{`{`, `{"node":""}`, `{"node":"x","hosts":[{"addr":"a:1","work":-5}]}`, `{"node":"x","extra":1}`, `{"node":"x"} {}`, `[]`,
		`{"node":"x","finished":["video_1"]}`, `{"node":"x","finished":[{"id":"video_1","gpu_ms":-1}]}`, `{"node":"x","finished":[{"id":""}]}`} {
		if code, v := signedSync(t, s, syncSecret, bad); code != 400 || v["error"] == nil {
			t.Errorf("%s = %d %v", bad, code, v)
		}
	}
	if n := s.Board.Nodes(); n != 1 {
		t.Fatalf("bad reports were recorded: %d nodes", n)
	}
	if code, _ := call(t, s, "GET", wire.PathFilterSync, ""); code != 405 {
		t.Fatalf("GET sync = %d", code)
	}
}

const syncSecret = "0123456789abcdef-sync"

// lastSigned keeps signedSync's times increasing, as one filter's are.
var lastSigned atomic.Int64

// signedSync posts a load report signed with secret, as a filter does.
func signedSync(t *testing.T, h http.Handler, secret, body string) (int, map[string]any) {
	t.Helper()
	at := time.Now().UnixMilli()
	if last := lastSigned.Load(); at <= last {
		at = last + 1
	}
	lastSigned.Store(at)
	return signedSyncAt(t, h, secret, body, at, "application/json")
}

func signedSyncAt(t *testing.T, h http.Handler, secret, body string, at int64, contentType string) (int, map[string]any) {
	t.Helper()
	return signedPostAt(t, h, wire.PathFilterSync, secret, body, at, contentType)
}

// signedPostAt posts body to path signed as a filter signs it.
func signedPostAt(t *testing.T, h http.Handler, path, secret, body string, at int64, contentType string) (int, map[string]any) {
	t.Helper()
	req := httptest.NewRequest("POST", path, strings.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	req.Header.Set(wire.HeaderSyncTime, strconv.FormatInt(at, 10))
	req.Header.Set(wire.HeaderSyncSignature, wire.SyncSignature([]byte(secret), at, []byte(body)))
	return serve(t, h, req)
}

// TestFilterSyncOnce: a signed report counts once; a copy, or an older one
// from the same node, is refused and changes nothing; so are a report not
// declared as JSON and numbers that could overflow a sum.
func TestFilterSyncOnce(t *testing.T) {
	s, _ := newAPI(t)
	s.Board = loadboard.New(loadboard.Options{})
	s.SyncSecret = []byte(syncSecret)
	w := worker(t, "T2I")
	if code, v := call(t, s, "POST", "/add_worker?url="+url.QueryEscape(w.URL), ""); code != 200 {
		t.Fatalf("add = %d %v", code, v)
	}
	addr := w.URL[len("http://"):]
	report := func(work int64) string {
		return `{"node":"envoy-1","hosts":[{"addr":"` + addr + `","work":` + strconv.FormatInt(work, 10) + `,"requests":1}]}`
	}
	work := func() float64 {
		_, list := call(t, s, "GET", "/workers", "")
		return list["workers"].([]any)[0].(map[string]any)["outstanding_work"].(float64)
	}
	at := time.Now().UnixMilli()
	if code, v := signedSyncAt(t, s, syncSecret, report(7), at, "application/json; charset=utf-8"); code != 200 {
		t.Fatalf("sync = %d %v", code, v)
	}
	if code, v := signedSyncAt(t, s, syncSecret, report(9000), at+5, "application/json"); code != 200 || work() != 9000 {
		t.Fatalf("later sync = %d %v; work %v", code, v, work())
	}
	for name, tc := range map[string]struct {
		body string
		at   int64
		ct   string
		code int
	}{
		"the same report again":      {report(9000), at + 5, "application/json", 409},
		"an older one":               {report(7), at, "application/json", 409},
		"too far behind to tell":     {report(7), at - 3000, "application/json", 409},
		"text/plain":                 {report(7), at + 10, "text/plain", 415},
		"no content type":            {report(7), at + 11, "", 415},
		"work of int64-max":          {report(math.MaxInt64), at + 12, "application/json", 400},
		"requests past the bound":    {`{"node":"envoy-1","hosts":[{"addr":"` + addr + `","work":1,"requests":99999999999}]}`, at + 13, "application/json", 400},
		"completion cost past bound": {`{"node":"envoy-1","completions":[{"addr":"` + addr + `","cost":9223372036854775807,"sent":1,"done":2}]}`, at + 14, "application/json", 400},
	} {
		if code, v := signedSyncAt(t, s, syncSecret, tc.body, tc.at, tc.ct); code != tc.code || v["error"] == nil {
			t.Errorf("%s: = %d %v, want %d with an error", name, code, v, tc.code)
		}
		if got := work(); got != 9000 {
			t.Fatalf("%s changed the worker's outstanding work to %v", name, got)
		}
	}
	// A late one (another thread's, overtaken on the way) is taken for
	// what it adds, but its older load does not replace the newer.
	if code, v := signedSyncAt(t, s, syncSecret, report(7), at+1, "application/json"); code != 200 || work() != 9000 {
		t.Fatalf("late sync = %d %v; work %v", code, v, work())
	}
	// A refused report burns no time: the filter's next one still counts.
	if code, v := signedSyncAt(t, s, syncSecret, report(3), at+6, "application/json"); code != 200 || work() != 3 {
		t.Fatalf("next sync = %d %v; work %v", code, v, work())
	}
	// Another node's times are its own.
	other := `{"node":"envoy-2","hosts":[{"addr":"` + addr + `","work":4,"requests":1}]}`
	if code, v := signedSyncAt(t, s, syncSecret, other, at, "application/json"); code != 200 || work() != 7 {
		t.Fatalf("another node's sync = %d %v; work %v", code, v, work())
	}
}
