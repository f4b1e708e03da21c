package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/diffrouter/diffusion-router/harness/fakeworker"

	"github.com/diffrouter/diffusion-router/wire"
)

// ScaleResult is one fleet size.
type ScaleResult struct {
	Workers int `json:"workers"`
	// add_worker returns once every Envoy reports the worker healthy, i.e.
	// routable: its latency is add-to-routable.
	AddP50MS float64 `json:"add_to_routable_p50_ms"`
	AddP99MS float64 `json:"add_to_routable_p99_ms"`
	// Quarantining a worker is one registry change and one xDS push, acked
	// by Envoy: its latency is the push time.
	PushP50MS        float64 `json:"xds_push_p50_ms"`
	PushP99MS        float64 `json:"xds_push_p99_ms"`
	ControlPlaneKiB  int64   `json:"control_plane_rss_kib"`
	EnvoyKiB         int64   `json:"envoy_rss_kib"`
	UpdateOneMS      float64 `json:"one_worker_update_ms"`
	FanoutMS         float64 `json:"fanout_update_ms"`
	FanoutRatio      float64 `json:"fanout_over_one"`
	FanoutSucceeded  int     `json:"fanout_succeeded"`
	RoutedToNewCheck bool    `json:"new_worker_served_a_request"`
}

// ScaleConfig measures the control plane with large fleets.
type ScaleConfig struct {
	RouterBin  string
	Sizes      []int
	UpdateTime time.Duration
	Log        io.Writer
}

// RunScale builds each fleet by adding workers one by one.
func RunScale(ctx context.Context, sc ScaleConfig) ([]ScaleResult, error) {
	var out []ScaleResult
	client := &http.Client{Timeout: 5 * time.Minute}
	for _, n := range sc.Sizes {
		cfg := fakeworker.DefaultConfig()
		cfg.TimeScale, cfg.UpdateTime = 1, sc.UpdateTime
		cfg.Base, cfg.PerStep = time.Millisecond, 0
		urls, stop, err := Workers(n, cfg)
		if err != nil {
			return out, err
		}
		r, err := StartRouter(sc.RouterBin, nil, "--health-check-interval", "10", "--sync-timeout", "30")
		if err != nil {
			stop()
			return out, err
		}
		res := ScaleResult{Workers: n}
		var adds []float64
		for _, u := range urls {
			start := time.Now()
			st, body, err := call(client, "POST", r.Front+"/add_worker?url="+url.QueryEscape(u), "")
			if err != nil || st != 200 || !strings.Contains(body, `"synced":true`) {
				r.Stop()
				stop()
				return out, fmt.Errorf("add worker %d of %d: %d %v %.200s", len(adds)+1, n, st, err, body)
			}
			adds = append(adds, float64(time.Since(start).Microseconds())/1000)
		}
		res.AddP50MS, res.AddP99MS = pct(adds, 0.5), pct(adds, 0.99)
		// The last worker added is routable: an idle worker gets the next
		// request under least-request once the others are busy... simply
		// send requests until it serves one.
		last := urls[len(urls)-1]
		for i := 0; i < 20*n && !res.RoutedToNewCheck; i++ {
			_, hdr, _, err := post(ctx, client, r.Front+"/v1/images/generations", map[string]any{"prompt": "p"})
			res.RoutedToNewCheck = err == nil && hdr.Get(wire.HeaderWorker) == last
		}
		var pushes []float64
		for _, u := range urls[:min(20, n)] {
			id := url.PathEscape(strings.NewReplacer(":", "%3A", "/", "%2F").Replace(u))
			start := time.Now()
			if st, body, err := call(client, "PUT", r.Front+"/workers/"+id, `{"is_dead": true}`); err != nil || st != 200 {
				r.Stop()
				stop()
				return out, fmt.Errorf("quarantine: %d %v %s", st, err, body)
			}
			pushes = append(pushes, float64(time.Since(start).Microseconds())/1000)
			if st, body, err := call(client, "PUT", r.Front+"/workers/"+id, `{"is_dead": false}`); err != nil || st != 200 {
				r.Stop()
				stop()
				return out, fmt.Errorf("re-admit: %d %v %s", st, err, body)
			}
		}
		res.PushP50MS, res.PushP99MS = pct(pushes, 0.5), pct(pushes, 0.99)
		res.ControlPlaneKiB, _ = RSSKiB(r.PID)
		if envoyPID := ChildPID(r.PID, "envoy"); envoyPID > 0 {
			res.EnvoyKiB, _ = RSSKiB(envoyPID)
		}
		// One worker's update time, then the whole fleet's.
		start := time.Now()
		if st, _, err := call(client, "POST", urls[0]+"/update_weights_from_disk", `{"model_path":"/ckpt/probe"}`); err != nil || st != 200 {
			r.Stop()
			stop()
			return out, fmt.Errorf("single update: %d %v", st, err)
		}
		res.UpdateOneMS = float64(time.Since(start).Microseconds()) / 1000
		start = time.Now()
		st, body, err := call(client, "POST", r.Front+"/update_weights_from_disk", `{"model_path":"/ckpt/scale"}`)
		res.FanoutMS = float64(time.Since(start).Microseconds()) / 1000
		var ans struct {
			Succeeded int `json:"succeeded"`
		}
		_ = json.Unmarshal([]byte(body), &ans)
		res.FanoutSucceeded = ans.Succeeded
		if err != nil || st != 200 {
			r.Stop()
			stop()
			return out, fmt.Errorf("fan-out: %d %v %.200s", st, err, body)
		}
		res.FanoutRatio = res.FanoutMS / res.UpdateOneMS
		if sc.Log != nil {
			fmt.Fprintf(sc.Log, "%5d workers: add-to-routable p50 %.1f ms p99 %.1f ms | xDS push p50 %.1f ms p99 %.1f ms | control plane %d MiB, Envoy %d MiB | fan-out %.0f ms vs one %.0f ms (x%.2f)\n",
				n, res.AddP50MS, res.AddP99MS, res.PushP50MS, res.PushP99MS, res.ControlPlaneKiB/1024, res.EnvoyKiB/1024, res.FanoutMS, res.UpdateOneMS, res.FanoutRatio)
		}
		out = append(out, res)
		r.Stop()
		stop()
	}
	return out, nil
}

func pct(v []float64, q float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return Quantile(s, q)
}

func call(client *http.Client, method, u, body string) (int, string, error) {
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// ChildPID finds a child process of parent by command name (0: none).
func ChildPID(parent int, comm string) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		name, f, ok := procStat(pid)
		if ok && len(f) > 1 && f[1] == strconv.Itoa(parent) && name == comm {
			return pid
		}
	}
	return 0
}

// procStat reads /proc/<pid>/stat: the command name, and the fields after
// it (f[0] is the state, the third field of stat).
func procStat(pid int) (comm string, fields []string, ok bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return "", nil, false
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return "", nil, false
	}
	return s[open+1 : end], strings.Fields(s[end+1:]), true
}
