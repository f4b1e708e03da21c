package router

import (
	"net"
	"testing"
)

// portListener is a listener that only has an address.
type portListener struct {
	net.Listener
	port   int
	closed *[]int
}

func (l portListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: l.port} }
func (l portListener) Close() error   { *l.closed = append(*l.closed, l.port); return nil }

func TestListenAvoidingNeverTakesAReservedPort(t *testing.T) {
	// The system hands out the front port twice, then a free one.
	handed := []int{30080, 30080, 41000}
	var closed []int
	listen := func(network, addr string) (net.Listener, error) {
		p := handed[0]
		handed = handed[1:]
		return portListener{port: p, closed: &closed}, nil
	}
	l, err := listenAvoidingWith(listen, "127.0.0.1", 0, []int{30080, 9901})
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Addr().(*net.TCPAddr).Port; got != 41000 {
		t.Fatalf("listened on %d, want 41000", got)
	}
	if len(closed) != 2 || closed[0] != 30080 || closed[1] != 30080 {
		t.Fatalf("closed %v, want the two reserved ones released", closed)
	}

	// The system never hands out anything else: a clear error.
	always := func(network, addr string) (net.Listener, error) {
		return portListener{port: 30080, closed: &closed}, nil
	}
	if _, err := listenAvoidingWith(always, "127.0.0.1", 0, []int{30080}); err == nil {
		t.Fatal("no error when only reserved ports come")
	}

	// A port asked for by number is taken as asked, reserved or not.
	var asked string
	byNumber := func(network, addr string) (net.Listener, error) {
		asked = addr
		return portListener{port: 30080, closed: &closed}, nil
	}
	if _, err := listenAvoidingWith(byNumber, "127.0.0.1", 30080, []int{30080}); err != nil || asked != "127.0.0.1:30080" {
		t.Fatalf("asked %q, %v", asked, err)
	}
}
