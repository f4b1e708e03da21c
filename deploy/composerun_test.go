//go:build compose

package deploy

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/harness/freeport"
)

// composeRun is one docker compose project of this repository's files,
// brought up by a test and removed with everything it made when the test
// ends (containers, volumes, networks, the images it built).
type composeRun struct {
	t        *testing.T
	ctx      context.Context
	project  string
	files    []string // beside docker-compose.yaml
	profiles []string
	env      []string
	// The router's ports on the host's loopback: the front port (base is
	// its URL), the registry API and Envoy's admin (compose.test.yaml).
	base, api, admin string
}

// startCompose prepares a project with the extra compose files, profiles
// and environment, the router's ports free ones on the host's loopback
// and no admin token; the caller brings it up with compose("up", ...).
func startCompose(t *testing.T, ctx context.Context, files, profiles []string, env ...string) *composeRun {
	t.Helper()
	front, api, admin := freePort(t), freePort(t), freePort(t)
	c := &composeRun{t: t, ctx: ctx, project: "drtest" + strconv.Itoa(os.Getpid()) + strings.ToLower(strings.TrimPrefix(t.Name(), "TestCompose")),
		files: files, profiles: profiles, base: "http://127.0.0.1:" + front, api: api, admin: admin,
		env: append(append(os.Environ(), "DIFFUSION_ROUTER_BIND=127.0.0.1", "DIFFUSION_ROUTER_PORT="+front,
			"DIFFUSION_ROUTER_API_PORT="+api, "DIFFUSION_ROUTER_ENVOY_ADMIN_PORT="+admin, "DIFFUSION_ROUTER_ADMIN_TOKEN="), env...)}
	imagesBefore := dockerIDs(t, plainRun, "images", "-aq")
	t.Cleanup(func() {
		// Cleanup has its own time: ctx may be spent.
		cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer ccancel()
		if t.Failed() {
			out, _ := c.cmd(cctx, "logs", "--tail", "40").CombinedOutput()
			t.Logf("compose logs:\n%s", out)
		}
		if out, err := c.cmd(cctx, "down", "-v", "--remove-orphans", "--timeout", "5").CombinedOutput(); err != nil {
			t.Errorf("compose down: %v\n%s", err, out)
		}
		for _, id := range dockerIDs(t, plainRun, "images", "-aq") {
			if !slices.Contains(imagesBefore, id) {
				_ = exec.Command("docker", "rmi", "-f", id).Run()
			}
		}
		label := "label=com.docker.compose.project=" + c.project
		for _, kind := range [][]string{{"ps", "-aq", "--filter", label}, {"volume", "ls", "-q", "--filter", label}, {"network", "ls", "-q", "--filter", label}} {
			if left := dockerIDs(t, plainRun, kind...); len(left) > 0 {
				t.Errorf("left behind: docker %s: %v", strings.Join(kind, " "), left)
			}
		}
	})
	return c
}

// cmd is docker compose on this project's files, from the repository's
// root.
func (c *composeRun) cmd(ctx context.Context, args ...string) *exec.Cmd {
	all := []string{"compose", "-p", c.project, "-f", "docker-compose.yaml"}
	for _, f := range c.files {
		all = append(all, "-f", f)
	}
	for _, p := range c.profiles {
		all = append(all, "--profile", p)
	}
	cmd := exec.CommandContext(ctx, "docker", append(all, args...)...)
	cmd.Dir, cmd.Env = "..", c.env
	return cmd
}

// compose runs docker compose and fails the test if it fails.
func (c *composeRun) compose(args ...string) string {
	c.t.Helper()
	out, err := c.cmd(c.ctx, args...).CombinedOutput()
	if err != nil {
		c.t.Fatalf("docker compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// run runs another command from the repository's root, in the project's
// environment.
func (c *composeRun) run(name string, args ...string) (string, error) {
	cmd := exec.CommandContext(c.ctx, name, args...)
	cmd.Dir, cmd.Env = "..", c.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// waitDemoWorkers waits until the demo profile's three workers have
// registered themselves through the registry REST API and are healthy
// behind the front port.
func (c *composeRun) waitDemoWorkers(hc *http.Client) {
	c.t.Helper()
	eventually(c.t, c.ctx, 2*time.Minute, "three healthy workers behind the front port", func() bool {
		var h struct {
			Healthy int `json:"healthy_workers"`
		}
		code, _, b := call(hc, "GET", c.base+"/health", "")
		return code == 200 && json.Unmarshal(b, &h) == nil && h.Healthy == 3
	})
}

// plainRun runs a command without a context (cleanup: the test's may be
// spent).
func plainRun(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func call(c *http.Client, method, u, body string) (int, http.Header, []byte) {
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		return 0, nil, nil
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func eventually(t *testing.T, ctx context.Context, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(500 * time.Millisecond) // a poll interval, under a deadline
	}
}

// ports hands out the host ports the compose files publish on, from below
// the kernel's ephemeral range (Docker binds them later).
var ports = freeport.New()

func freePort(t *testing.T) string {
	t.Helper()
	p, err := ports.Pick("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return strconv.Itoa(p)
}

// dockerIDs runs a docker listing and returns its lines.
func dockerIDs(t *testing.T, run func(string, ...string) (string, error), args ...string) []string {
	t.Helper()
	out, err := run("docker", args...)
	if err != nil {
		t.Errorf("docker %s: %v %s", strings.Join(args, " "), err, out)
		return nil
	}
	return strings.Fields(out)
}
