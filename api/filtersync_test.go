package api

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
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

// signedSync posts a load report signed with secret, as a filter does.
func signedSync(t *testing.T, h http.Handler, secret, body string) (int, map[string]any) {
	t.Helper()
	at := time.Now().UnixMilli()
	req := httptest.NewRequest("POST", wire.PathFilterSync, strings.NewReader(body))
	req.Header.Set(wire.HeaderSyncTime, strconv.FormatInt(at, 10))
	req.Header.Set(wire.HeaderSyncSignature, wire.SyncSignature([]byte(secret), at, []byte(body)))
	return serve(t, h, req)
}
