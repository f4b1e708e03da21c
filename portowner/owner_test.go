package portowner

import (
	"net"
	"os"
	"strings"
	"testing"
)

// TestFindsThisProcess: a port this test listens on is found as held by
// this process; a closed one is not found.
func TestFindsThisProcess(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	p, ok := Find(port)
	if !ok || p.PID != os.Getpid() {
		t.Fatalf("Find(%d) = %+v, %v; want this process (%d)", port, p, ok, os.Getpid())
	}
	if hs := Holders(port); len(hs) != 1 || hs[0].PID != os.Getpid() {
		t.Fatalf("Holders(%d) = %v, want this process alone", port, hs)
	}
	if !strings.Contains(p.String(), "pid ") {
		t.Fatalf("String() = %q", p.String())
	}
	l.Close()
	if p, ok := Find(port); ok {
		t.Fatalf("a closed port is held by %v", p)
	}
}

// TestTable reads a /proc/net/tcp table: only LISTEN rows on the port.
func TestTable(t *testing.T) {
	dir := t.TempDir()
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 222 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 333 1 0000000000000000 100 0 0 10 0
`
	if err := os.WriteFile(dir+"/tcp", []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		port int
		want string
	}{{8080, "111"}, {8081, "333"}, {8082, ""}} {
		got := strings.Join(listening(dir+"/tcp", tc.port), ",")
		if got != tc.want {
			t.Errorf("port %d: inodes %q, want %q", tc.port, got, tc.want)
		}
	}
}

// TestEstablished counts the connections to a port, server side only.
func TestEstablished(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	if n := Established(port); n != 0 {
		t.Fatalf("%d connections before any", n)
	}
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, s)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if n := Established(port); n != 3 {
		t.Fatalf("Established(%d) = %d, want 3 (the server's side of each)", port, n)
	}
}
