package router

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/procgroup"
)

// demoStartTimeout bounds how long a demo worker may take to listen.
const demoStartTimeout = 30 * time.Second

// listeningLine is what fake-worker prints once it serves.
var listeningLine = regexp.MustCompile(`^fake-worker \S+ listening on (http://\S+)`)

// findFakeWorker finds the fake-worker binary: the flag's path, else the
// one beside this binary (make build puts them together), else on PATH.
// The router does not link the stand-in; the demo runs it as processes.
func findFakeWorker(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if self, err := os.Executable(); err == nil {
		beside := filepath.Join(filepath.Dir(self), "fake-worker")
		if st, err := os.Stat(beside); err == nil && !st.IsDir() {
			return beside, nil
		}
	}
	p, err := exec.LookPath("fake-worker")
	if err != nil {
		return "", errors.New("--demo-workers runs the fake-worker binary, found neither beside this binary nor on PATH (make build puts it in bin/; or name it with --demo-worker-bin)")
	}
	return p, nil
}

// demoFleet is the running demo workers.
type demoFleet struct {
	urls  []string
	procs []*procgroup.Group
}

// stop ends every demo worker and waits for it.
func (d *demoFleet) stop() {
	for _, p := range d.procs {
		p.Stop(5 * time.Second)
	}
}

// startDemoWorkers runs n fake sglang-diffusion workers as processes on free
// loopback ports, for trying the router without GPUs. The last one
// generates videos, the others images. On error the ones started are
// stopped.
func startDemoWorkers(ctx context.Context, bin string, n int, timeScale float64, log *logrus.Entry) (*demoFleet, error) {
	d := &demoFleet{}
	for i := range n {
		id := fmt.Sprintf("demo-worker-%d", i+1)
		args := []string{"--host", "127.0.0.1", "--port", "0", "--worker-id", id,
			"--time-scale", strconv.FormatFloat(timeScale, 'g', -1, 64), "--update-time", "5s"}
		taskType := "T2I"
		if n > 1 && i == n-1 {
			taskType = "T2V"
			args = append(args, "--task-type", taskType, "--model-path", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
		}
		url, p, err := startDemoWorker(ctx, bin, args, log.WithField("worker_id", id))
		if err != nil {
			d.stop()
			return nil, fmt.Errorf("demo worker %s: %w", id, err)
		}
		d.procs = append(d.procs, p)
		d.urls = append(d.urls, url)
		log.WithFields(logrus.Fields{"worker": url, "id": id, "task_type": taskType, "pid": p.PID}).Info("demo worker started")
	}
	return d, nil
}

// startDemoWorker starts one fake-worker and reads its URL from the line it
// prints once it listens.
func startDemoWorker(ctx context.Context, bin string, args []string, log *logrus.Entry) (string, *procgroup.Group, error) {
	cmd := exec.Command(bin, args...)
	// The demo fleet is the router's own: it ends with the router, even
	// one killed (a restarted router starts its own demo fleet).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr := log.WriterLevel(logrus.WarnLevel)
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	p, err := procgroup.Start(cmd)
	if err != nil {
		_ = stderr.Close()
		return "", nil, err
	}
	go func() { <-p.Done(); _ = stderr.Close() }()
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := listeningLine.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
				break
			}
		}
		// The rest is not needed, but the pipe must not fill up.
		_, _ = io.Copy(io.Discard, out)
	}()
	t := time.NewTimer(demoStartTimeout)
	defer t.Stop()
	select {
	case url := <-found:
		return url, p, nil
	case <-p.Done():
		return "", nil, fmt.Errorf("%s exited before it listened: %w", bin, p.Err())
	case <-t.C:
		err = fmt.Errorf("%s did not listen within %s", bin, demoStartTimeout)
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.Stop(time.Second)
	return "", nil, err
}
