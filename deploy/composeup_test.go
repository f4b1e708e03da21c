//go:build compose

package deploy

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestComposeUp runs the project's own compose file (the demo profile,
// images built offline: make compose-test) and uses it as a user would:
// workers register through the registry REST API, image and video requests
// go through the front port, Envoy's stats count them, a weight update
// changes the version header (but not a running job's), a worker is
// removed, the control plane restarts with its registry and job ids
// intact, a killed Envoy comes back; then everything it made is removed.
func TestComposeUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	cp := startCompose(t, ctx, []string{"deploy/compose.offline.yaml", "deploy/compose.test.yaml"}, []string{"demo"})
	compose, run, project, base, api, admin := cp.compose, cp.run, cp.project, cp.base, cp.api, cp.admin
	compose("up", "-d", "--build")
	c := &http.Client{Timeout: 30 * time.Second}
	cp.waitDemoWorkers(c)
	// Envoy's stats: the filter's counters and per-worker upstream requests.
	stats := func(filter string) map[string]int {
		_, _, b := call(c, "GET", "http://127.0.0.1:"+admin+"/stats?filter="+url.QueryEscape(filter), "")
		out := map[string]int{}
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ": "); ok {
				n, _ := strconv.Atoi(strings.TrimSpace(v))
				out[k] = n
			}
		}
		return out
	}
	// The filter picks from its view, which follows the registry by an
	// xDS push and a sync: the workers are registered (above) a moment
	// before the view lists them all.
	eventually(t, ctx, time.Minute, "the filter's view to list the three workers", func() bool {
		return len(stats(`wasmcustom\.diffusion_router\.pick\.outstanding_work\.`)) == 3
	})

	code, hdr, b := call(c, "POST", base+"/v1/images/generations", `{"prompt":"a red fox in snow","num_inference_steps":2,"size":"256x256"}`)
	if code != 200 || !strings.HasPrefix(hdr.Get("x-diffusion-worker"), "http://fake-worker-") || hdr.Get("x-weight-version") != "0" {
		t.Fatalf("image = %d %v %.200s", code, hdr, b)
	}
	code, hdr, b = call(c, "POST", base+"/v1/videos", `{"prompt":"waves","num_inference_steps":2,"size":"256x256"}`)
	var job struct{ ID, Status string }
	if code != 200 || json.Unmarshal(b, &job) != nil || strings.Count(job.ID, ".") < 2 || hdr.Get("x-diffusion-worker") != "http://fake-worker-3:31000" {
		t.Fatalf("video create = %d %v %.300s (the id must be signed, the job on the video worker)", code, hdr, b)
	}
	poll := func() (int, http.Header) {
		code, hdr, b := call(c, "GET", base+"/v1/videos/"+job.ID, "")
		_ = json.Unmarshal(b, &job)
		return code, hdr
	}
	eventually(t, ctx, time.Minute, "the video job to complete", func() bool {
		code, _ := poll()
		return code == 200 && job.Status == "completed"
	})
	if code, hdr, _ := call(c, "GET", base+"/v1/videos/"+job.ID+"/content", ""); code != 200 || hdr.Get("Content-Type") != "video/mp4" {
		t.Fatalf("content = %d %v", code, hdr)
	}
	// Two more at once for the one video worker: the second finds its
	// slot taken and is held by the control plane, which sends it through
	// the Envoy service (--held-jobs-envoy) when the first ends.
	var more []string
	for range 2 {
		code, _, b := call(c, "POST", base+"/v1/videos", `{"prompt":"more waves","num_inference_steps":2,"size":"256x256"}`)
		var j struct{ ID string }
		if code != 200 || json.Unmarshal(b, &j) != nil || j.ID == "" {
			t.Fatalf("video create = %d %.300s", code, b)
		}
		more = append(more, j.ID)
	}
	var queue struct {
		Held struct {
			Taken int `json:"taken"`
		} `json:"held_jobs"`
	}
	if code, _, b := call(c, "GET", base+"/queue", ""); code != 200 || json.Unmarshal(b, &queue) != nil || queue.Held.Taken < 1 {
		t.Fatalf("GET /queue = %d %.300s: want a held video job", code, b)
	}
	for _, id := range more {
		eventually(t, ctx, time.Minute, "video job "+id+" to complete", func() bool {
			code, _, b := call(c, "GET", base+"/v1/videos/"+id, "")
			var j struct{ Status string }
			return code == 200 && json.Unmarshal(b, &j) == nil && j.Status == "completed"
		})
	}

	// The filter holds the control plane's job-id secret: it picks with
	// the control plane's view (its syncs are signed with the secret) and
	// the control plane takes the jobs it records (their ids are).
	s := stats(`wasmcustom\.diffusion_router\.(requests\.(image|video)|pick\.picked|filter\.job_book_errors)$`)
	if s["wasmcustom.diffusion_router.requests.image"] < 1 || s["wasmcustom.diffusion_router.requests.video"] < 1 ||
		s["wasmcustom.diffusion_router.pick.picked"] < 2 || s["wasmcustom.diffusion_router.filter.job_book_errors"] != 0 {
		t.Fatalf("the filter's counters: %v", s)
	}
	_, _, clusters := call(c, "GET", "http://127.0.0.1:"+admin+"/clusters", "")
	served := 0
	for _, line := range strings.Split(string(clusters), "\n") {
		if f := strings.Split(line, "::"); len(f) == 4 && f[0] == "workers" && f[2] == "rq_total" {
			n, _ := strconv.Atoi(f[3])
			served += n
		}
	}
	if served < 3 {
		t.Fatalf("Envoy's per-worker upstream requests add up to %d, want at least 3:\n%s", served, clusters)
	}

	// A weight update: new answers name the new version, the job made
	// before it keeps naming its own.
	code, _, b = call(c, "POST", base+"/update_weights_from_disk", `{"model_path":"/ckpt/compose-1","weight_version":"compose-1"}`)
	if code != 200 {
		t.Fatalf("update = %d %s", code, b)
	}
	if code, hdr, _ := call(c, "POST", base+"/v1/images/generations", `{"prompt":"p","num_inference_steps":2,"size":"256x256"}`); code != 200 || hdr.Get("x-weight-version") != "compose-1" {
		t.Fatalf("image after the update = %d, version %q", code, hdr.Get("x-weight-version"))
	}
	if code, hdr := poll(); code != 200 || hdr.Get("x-weight-version") != "0" {
		t.Fatalf("the job made before the update = %d, version %q", code, hdr.Get("x-weight-version"))
	}

	// Remove a worker.
	if code, _, b := call(c, "POST", base+"/remove_worker?url="+url.QueryEscape("http://fake-worker-2:31000"), ""); code != 200 {
		t.Fatalf("remove = %d %s", code, b)
	}
	listed := func() []string {
		var l struct{ URLs []string }
		_, _, b := call(c, "GET", "http://127.0.0.1:"+api+"/list_workers", "")
		_ = json.Unmarshal(b, &l)
		slices.Sort(l.URLs)
		return l.URLs
	}
	want := []string{"http://fake-worker-1:31000", "http://fake-worker-3:31000"}
	eventually(t, ctx, time.Minute, "the removed worker to leave", func() bool { return slices.Equal(listed(), want) })

	// The control plane restarts: its registry and the job ids survive.
	compose("restart", "control-plane")
	eventually(t, ctx, 2*time.Minute, "the restarted control plane to serve its registry", func() bool {
		code, _, b := call(c, "GET", base+"/health", "")
		return code == 200 && strings.Contains(string(b), `"weight_version":"compose-1"`) && slices.Equal(listed(), want)
	})
	if code, hdr := poll(); code != 200 || job.Status != "completed" || hdr.Get("x-weight-version") != "0" {
		t.Fatalf("the job after a control-plane restart = %d %s, version %q", code, job.Status, hdr.Get("x-weight-version"))
	}

	// Envoy dies: Docker starts it again (restart: unless-stopped) and it
	// gets its configuration back over xDS.
	out, err := run("docker", "inspect", "-f", "{{.State.Pid}}", project+"-envoy-1")
	pid, _ := strconv.Atoi(strings.TrimSpace(out))
	if err != nil || pid <= 1 {
		t.Fatalf("Envoy's pid: %v %q", err, out)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, 2*time.Minute, "the killed Envoy to come back and route", func() bool {
		out, _ := run("docker", "inspect", "-f", "{{.RestartCount}}", project+"-envoy-1")
		n, _ := strconv.Atoi(strings.TrimSpace(out))
		code, _, _ := call(c, "POST", base+"/v1/images/generations", `{"prompt":"p","num_inference_steps":2,"size":"256x256"}`)
		return n >= 1 && code == 200
	})
}
