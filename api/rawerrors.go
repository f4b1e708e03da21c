package api

import (
	"encoding/json"
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync"
)

// JSONErrorListener wraps the API's listener so that the answers Go's HTTP
// server writes by itself, before any handler runs (a malformed request
// line, headers too large, a bad Host), are JSON like every other error of
// the API. Those answers are written straight to the connection in one
// write, in a shape no handler produces (text/plain, Connection: close).
func JSONErrorListener(l net.Listener) net.Listener { return jsonErrorListener{l} }

type jsonErrorListener struct{ net.Listener }

func (l jsonErrorListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &jsonErrorConn{Conn: c}, nil
}

type jsonErrorConn struct {
	net.Conn
	once sync.Once
}

// serverError matches net/http's own error answer.
var serverError = regexp.MustCompile(`\AHTTP/1\.1 ([0-9]{3}) ([^\r\n]*)\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n([^\r\n]*)\z`)

func (c *jsonErrorConn) Write(b []byte) (int, error) {
	rewritten := false
	c.once.Do(func() {
		// Only a connection's first write can be one of these answers:
		// they come before any request was read, then the server closes.
		if rewrittenAnswer, ok := rewriteServerError(b); ok {
			rewritten = true
			_, err := c.Conn.Write(rewrittenAnswer)
			if err != nil {
				rewritten = false
			}
		}
	})
	if rewritten {
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// rewriteServerError turns net/http's plain-text error answer into JSON.
func rewriteServerError(b []byte) ([]byte, bool) {
	m := serverError.FindSubmatch(b)
	if m == nil {
		return nil, false
	}
	msg := strings.TrimSpace(string(m[3]))
	if msg == "" {
		msg = string(m[2])
	}
	body, err := json.Marshal(map[string]string{"error": "malformed HTTP request: " + msg})
	if err != nil {
		return nil, false
	}
	return fmt.Appendf(nil, "HTTP/1.1 %s %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		m[1], m[2], len(body), body), true
}
