package api

import (
	"net/url"
	"testing"

	"github.com/diffrouter/diffusion-router/loadboard"
	"github.com/diffrouter/diffusion-router/wire"
)

// TestFilterSync: a filter's report comes back as a view of the eligible
// workers, its work shows on GET /workers, and bad reports change nothing.
func TestFilterSync(t *testing.T) {
	s, _ := newAPI(t)
	if code, v := call(t, s, "POST", wire.PathFilterSync, `{"node":"a"}`); code != 404 {
		t.Fatalf("sync with least-work off = %d %v", code, v)
	}
	s.Board = loadboard.New(loadboard.Options{})
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
	code, v := call(t, s, "POST", wire.PathFilterSync, `{"node":"envoy-1","generation":0,"hosts":[{"addr":"`+addr+`","work":150,"requests":3,"ms_per_cost":2,"samples":4}]}`)
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
		if code, v := call(t, s, "POST", wire.PathFilterSync, bad); code != 400 || v["error"] == nil {
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
