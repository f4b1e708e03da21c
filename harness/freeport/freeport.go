// Package freeport picks TCP ports that another process will bind later
// (an Envoy's front or admin port, a worker's address in a test).
//
// A port found by binding port 0 comes from the kernel's ephemeral range,
// so any process binding port 0 before the child binds it can be handed the
// same port: a busy machine running tests in parallel did exactly that (an
// Envoy's listener lost its front port to another router's API socket).
// Ports picked here come from below that range, where the kernel never
// hands out ports on its own, and one Picker never hands out a port twice
// until it has gone round its whole range.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// lowest is the first port considered: well above the registered ports
// that services commonly bind.
const lowest = 15000

// Picker hands out free ports, each at most once per round of its range.
// Its methods are safe for concurrent use.
type Picker struct {
	mu     sync.Mutex
	lo, hi int // [lo, hi) outside the ephemeral range; hi <= lo: use port 0
	next   int
}

// New returns a Picker starting at a random place in its range, so two
// processes picking at once rarely walk the same ports.
func New() *Picker {
	lo, hi := rangeBelow(ephemeralStart())
	p := &Picker{lo: lo, hi: hi}
	if hi > lo {
		p.next = lo + rand.IntN(hi-lo)
	}
	return p
}

// Pick returns a port on host that nothing listened on at the time of the
// call.
func (p *Picker) Pick(host string) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hi <= p.lo {
		return kernelPort(host)
	}
	for range p.hi - p.lo {
		port := p.next
		if p.next++; p.next >= p.hi {
			p.next = p.lo
		}
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			continue // taken, or not ours to bind: try the next one
		}
		l.Close()
		return port, nil
	}
	return 0, fmt.Errorf("freeport: no free port on %s in [%d, %d)", host, p.lo, p.hi)
}

// Pick returns a free port on host from a fresh Picker: for a process that
// picks only now and then (a benchmark run).
func Pick(host string) (int, error) { return New().Pick(host) }

// kernelPort is the fallback where no ports lie below the ephemeral range.
func kernelPort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("freeport: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// rangeBelow is the range of ports picked when the kernel's ephemeral
// range starts at start; empty when too few ports lie below it.
func rangeBelow(start int) (lo, hi int) {
	if start-lowest < 1000 {
		return 0, 0
	}
	return lowest, start
}

// ephemeralStart reads where the kernel's ephemeral range begins; Linux's
// default when it cannot be read (other systems start higher).
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	return parseRangeStart(string(b))
}

// parseRangeStart reads the first number of "32768\t60999"; Linux's default
// when the text is not that.
func parseRangeStart(s string) int {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n < 1 || n > 65535 {
		return 32768
	}
	return n
}
