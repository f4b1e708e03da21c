package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/diffrouter/diffusion-router/portowner"
)

// ResourceSample is what the router holds at one moment of a burst: the
// control plane's goroutines and resident memory, Envoy's resident
// memory, and the open connections to the control plane's API (Envoy's
// callouts and syncs).
type ResourceSample struct {
	Phase      string  `json:"phase"`
	Goroutines int     `json:"goroutines"`
	ControlMB  float64 `json:"control_plane_rss_mb"`
	EnvoyMB    float64 `json:"envoy_rss_mb"`
	APIConns   int     `json:"api_connections"`
	WaitingNow int     `json:"waiting"`
	SampledAtS float64 `json:"t_s"`
}

// burstResources: a burst that waits in the router's queue, and what the
// router holds before, at its peak, when it drained, and 20 s and 60 s
// later (issue 34: one long-poll per waiting request on its own
// connection left thousands of goroutines and connections behind).
func burstResources(ctx context.Context, l *queueLab) (QueueScenario, error) {
	var r QueueScenario
	envoyPID := ChildPID(l.router.PID, "envoy")
	sample := func(phase string, start time.Time) ResourceSample {
		s := ResourceSample{Phase: phase, SampledAtS: time.Since(start).Seconds(), WaitingNow: l.routerWaiting()}
		s.Goroutines = Goroutines(l.client, l.router.API)
		if kb, err := RSSKiB(l.router.PID); err == nil {
			s.ControlMB = float64(kb) / 1024
		}
		if kb, err := RSSKiB(envoyPID); err == nil && envoyPID != 0 {
			s.EnvoyMB = float64(kb) / 1024
		}
		s.APIConns = APIConnections(l.router.API)
		return s
	}
	start := time.Now()
	r.Resources = append(r.Resources, sample("before", start))
	done := l.burst(ctx, l.qc.Burst, nil)
	peak := ResourceSample{Phase: "peak"}
	var as []answer
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case as = <-done:
			break wait
		case <-tick.C:
			s := sample("peak", start)
			r.MaxWaiting = max(r.MaxWaiting, s.WaitingNow)
			if s.Goroutines > peak.Goroutines {
				peak = s
			}
		case <-ctx.Done():
			return r, ctx.Err()
		}
	}
	r.finish(start, as)
	r.Resources = append(r.Resources, peak, sample("drained", start))
	for _, after := range []time.Duration{20 * time.Second, 60 * time.Second} {
		select {
		case <-time.After(time.Until(start.Add(time.Duration(r.MakespanS*float64(time.Second)) + after))):
		case <-ctx.Done():
			return r, ctx.Err()
		}
		r.Resources = append(r.Resources, sample(fmt.Sprintf("+%ds", int(after.Seconds())), start))
	}
	return r, nil
}

// Goroutines is a control plane's go_goroutines gauge, read from its API's
// /metrics (-1: unreadable).
func Goroutines(c *http.Client, api string) int {
	req, err := http.NewRequest(http.MethodGet, api+"/metrics", nil)
	if err != nil {
		return -1
	}
	resp, err := c.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return int(n)
		}
	}
	return -1
}

// APIConnections counts the established TCP connections to the API's
// port (the server's side of each; -1: unknown).
func APIConnections(api string) int {
	u, err := url.Parse(api)
	if err != nil {
		return -1
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		return -1
	}
	return portowner.Established(port)
}
