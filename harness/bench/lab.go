package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/diffrouter/diffusion-router/harness/fakeworker"
	"github.com/diffrouter/diffusion-router/harness/freeport"
	"github.com/diffrouter/diffusion-router/procgroup"
)

// Workers starts n fake workers in this process on free loopback ports.
// stop closes them.
func Workers(n int, cfg fakeworker.Config) (urls []string, stop func(), err error) {
	var stops []func()
	stop = func() {
		for _, s := range stops {
			s()
		}
	}
	for i := range n {
		c := cfg
		c.WorkerID = fmt.Sprintf("bench-worker-%d", i+1)
		url, s, err := fakeworker.Start(c)
		if err != nil {
			stop()
			return nil, nil, fmt.Errorf("worker %d: %w", i+1, err)
		}
		stops = append(stops, s)
		urls = append(urls, url)
	}
	return urls, stop, nil
}

// Router is a diffusion-router process started for a benchmark.
type Router struct {
	Front, API, Admin string
	PID               int
	group             *procgroup.Group
}

var readyLine = regexp.MustCompile(`ready on (http://\S+) \(registry API (http://\S+), Envoy admin (http://[^)\s]+)\)`)

// StartRouter runs the router binary on a free port and waits until it
// serves. Its log goes to logw (may be nil).
func StartRouter(bin string, logw io.Writer, args ...string) (*Router, error) {
	port, err := freeport.Pick("127.0.0.1")
	if err != nil {
		return nil, err
	}
	all := append([]string{"--host", "127.0.0.1", "--port", strconv.Itoa(port), "--log-level", "warning"}, args...)
	cmd := exec.Command(bin, all...)
	if logw == nil {
		logw = io.Discard
	}
	cmd.Stderr = logw
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	g, err := procgroup.Start(cmd)
	if err != nil {
		return nil, err
	}
	r := &Router{group: g, PID: g.PID}
	ready := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := readyLine.FindStringSubmatch(sc.Text()); m != nil {
				ready <- m
			}
		}
	}()
	select {
	case m := <-ready:
		r.Front, r.API, r.Admin = m[1], m[2], m[3]
		return r, nil
	case <-g.Done():
		return nil, fmt.Errorf("router exited before it was ready: %w", g.Err())
	case <-time.After(90 * time.Second):
		r.Stop()
		return nil, errors.New("router not ready after 90 s")
	}
}

// Stop ends the router and its Envoy (the whole process group).
func (r *Router) Stop() { r.group.Stop(10 * time.Second) }

// RSSKiB reads a process's resident memory from /proc.
func RSSKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, errors.New("no VmRSS")
}
