package api

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestMalformedRequestsGetJSON(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"ok":true}`)
	}), MaxHeaderBytes: 4096}
	go srv.Serve(JSONErrorListener(lis))
	t.Cleanup(func() { srv.Close() })

	tests := []struct {
		name, raw  string
		wantStatus int
	}{
		{"garbage request line", "GARBAGE\r\n\r\n", 400},
		{"bad version", "GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505},
		{"no host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"header too large", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 8192) + "\r\n\r\n", 431},
		{"a good request passes untouched", "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", lis.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, tt.raw)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			var doc map[string]any
			if resp.StatusCode != tt.wantStatus || resp.Header.Get("Content-Type") != "application/json" || json.Unmarshal(body, &doc) != nil {
				t.Fatalf("%d %q %s, want %d and a JSON body", resp.StatusCode, resp.Header.Get("Content-Type"), body, tt.wantStatus)
			}
			if tt.wantStatus != 200 && doc["error"] == "" {
				t.Fatalf("no error message: %s", body)
			}
		})
	}
}
