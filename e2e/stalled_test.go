package e2e

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestStalledRequestBodyCut: without --timeout, a client that sends half a
// body and stops is answered 408 (JSON) after --request-idle-timeout and
// its connection closed; a client that sends slowly but steadily, and a
// generation that takes longer than the idle limit, are not cut.
func TestStalledRequestBodyCut(t *testing.T) {
	t.Parallel()
	// Real time: a 30-step 1024x1024 image takes about 4 s, twice the
	// idle limit; the small ones a few tens of milliseconds.
	_, urls := startFleet(t, 2, "--time-scale", "1")
	r := startRouter(t, "--request-idle-timeout", "2", "--worker-urls", strings.Join(urls, ","))
	addr := strings.TrimPrefix(r.Front, "http://")
	body := `{"prompt":"` + strings.Repeat("a", 40) + `","num_inference_steps":2,"size":"256x256"}`
	head := "POST /v1/images/generations HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"

	// send writes the head and the body's pieces with a pause before
	// each, then reads the answer.
	send := func(pieces []string, pause time.Duration) (*http.Response, []byte, time.Duration) {
		t.Helper()
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		if _, err := io.WriteString(conn, head); err != nil {
			t.Fatal(err)
		}
		for _, p := range pieces {
			time.Sleep(pause) // the client's own pace, not a wait for readiness
			if _, err := io.WriteString(conn, p); err != nil {
				break // cut while sending: the answer says why
			}
		}
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, b, time.Since(start)
	}

	// Half a body, then nothing.
	resp, b, took := send([]string{body[:len(body)/2]}, 0)
	var e map[string]any
	if resp.StatusCode != 408 || json.Unmarshal(b, &e) != nil || !strings.Contains(e["error"].(string), "stalled") {
		t.Fatalf("stalled body = %d %s", resp.StatusCode, b)
	}
	if took < 2*time.Second || took > 10*time.Second {
		t.Fatalf("stalled body cut after %v, want about 2 s", took)
	}
	if !resp.Close {
		t.Error("the connection of a cut request stays open")
	}

	// A byte every 0.5 s for 4 s: slow, never idle for 2 s.
	var pieces []string
	step := len(body) / 8
	for i := 0; i < len(body); i += step {
		pieces = append(pieces, body[i:min(i+step, len(body))])
	}
	if resp, b, took := send(pieces, 500*time.Millisecond); resp.StatusCode != 200 || took < 4*time.Second {
		t.Fatalf("steady slow body = %d after %v: %.200s", resp.StatusCode, took, b)
	}

	// A generation longer than the idle limit.
	start := time.Now()
	long := postJSON(t, r.Front+"/v1/images/generations", map[string]any{"prompt": "p", "num_inference_steps": 30, "size": "1024x1024"})
	if long.Status != 200 {
		t.Fatalf("long generation = %d %s", long.Status, long.Body)
	}
	if took := time.Since(start); took < 3*time.Second {
		t.Fatalf("the generation took %v: not longer than the idle limit, so the test shows nothing", took)
	}
	if n := envoyStat(t, r.Admin, "wasmcustom.diffusion_router.filter.stalled_requests_cut"); n != 1 {
		t.Fatalf("stalled_requests_cut = %d, want 1", n)
	}
}
