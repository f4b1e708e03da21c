package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestParseRangeStart(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
	}{
		{"32768\t60999\n", 32768},
		{"40000 50000", 40000},
		{"", 32768},
		{"abc 60999", 32768},
		{"0 60999", 32768},
		{"70000 80000", 32768},
		{"1 2 3", 32768},
	} {
		if got := parseRangeStart(tc.in); got != tc.want {
			t.Errorf("parseRangeStart(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestRangeBelow(t *testing.T) {
	for _, tc := range []struct {
		start, lo, hi int
	}{
		{32768, lowest, 32768},
		{49152, lowest, 49152},
		{lowest + 999, 0, 0}, // too few ports below: the kernel's port 0
		{1024, 0, 0},
	} {
		if lo, hi := rangeBelow(tc.start); lo != tc.lo || hi != tc.hi {
			t.Errorf("rangeBelow(%d) = [%d, %d), want [%d, %d)", tc.start, lo, hi, tc.lo, tc.hi)
		}
	}
}

func TestPickHandsOutDistinctFreePortsBelowTheEphemeralRange(t *testing.T) {
	p := New()
	seen := map[int]bool{}
	for range 50 {
		port, err := p.Pick("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		if seen[port] {
			t.Fatalf("port %d handed out twice", port)
		}
		seen[port] = true
		if p.hi > p.lo && (port < p.lo || port >= p.hi) {
			t.Fatalf("port %d outside [%d, %d)", port, p.lo, p.hi)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatalf("picked port %d cannot be bound: %v", port, err)
		}
		l.Close()
	}
}

func TestPickSkipsATakenPort(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	x := taken.Addr().(*net.TCPAddr).Port
	p := &Picker{lo: x, hi: x + 2, next: x}
	got, err := p.Pick("127.0.0.1")
	if err == nil && got != x+1 {
		t.Fatalf("picked %d from [%d, %d) with %d listened on; want %d", got, x, x+2, x, x+1)
	}
}

func TestPickWrapsAround(t *testing.T) {
	x, err := kernelPort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	p := &Picker{lo: x, hi: x + 1, next: x}
	for i := range 2 {
		port, err := p.Pick("127.0.0.1")
		if err != nil || port != x {
			t.Fatalf("pick %d from [%d, %d) = %d, %v; want %d again", i, x, x+1, port, err, x)
		}
	}
}

func TestKernelFallback(t *testing.T) {
	p := &Picker{} // empty range
	port, err := p.Pick("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if port <= 0 {
		t.Fatalf("port %d", port)
	}
}
