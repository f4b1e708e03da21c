package envoy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// Supervisor runs one Envoy process and restarts it when it dies.
type Supervisor struct {
	Bin        string
	ConfigPath string
	// LogLevel is Envoy's own log level (trace..off).
	LogLevel    string
	Concurrency int
	// ExtraArgs are appended to Envoy's command line.
	ExtraArgs []string
	Log       *logrus.Entry

	// MinBackoff and MaxBackoff bound the wait before a restart; the wait
	// doubles on each quick death and resets after a process lived long.
	MinBackoff, MaxBackoff time.Duration
	// StopGrace is how long Envoy gets after SIGTERM before SIGKILL.
	StopGrace time.Duration

	mu       sync.Mutex
	pid      int
	starts   int
	lastExit string
}

// Status is a point-in-time view of the supervised process.
type Status struct {
	PID      int    `json:"pid"`
	Starts   int    `json:"starts"`
	LastExit string `json:"last_exit,omitempty"`
}

// Status reports the current process and how often it was started.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Status{PID: s.pid, Starts: s.starts, LastExit: s.lastExit}
}

// Run keeps Envoy running until ctx is cancelled, then stops it. It returns
// an error only when Envoy cannot be started at all.
func (s *Supervisor) Run(ctx context.Context) error {
	// Envoy gets SIGKILL when the thread that started it dies (Pdeathsig), so
	// a control plane killed with -9 does not leave an orphan Envoy holding
	// the port. Pin this goroutine to its thread for the process's lifetime.
	runtime.LockOSThread()
	minB, maxB := s.MinBackoff, s.MaxBackoff
	if minB <= 0 {
		minB = 500 * time.Millisecond
	}
	if maxB < minB {
		maxB = 30 * time.Second
	}
	backoff := minB
	for {
		started := time.Now()
		exit, err := s.runOnce(ctx)
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		lived := time.Since(started)
		if lived > 2*maxB {
			backoff = minB
		}
		s.mu.Lock()
		s.lastExit = exit
		s.mu.Unlock()
		s.Log.WithFields(logrus.Fields{"lived": lived.Round(time.Millisecond).String(), "restart_in": backoff.String()}).
			Errorf("Envoy exited unexpectedly (%s); restarting it", exit)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxB)
	}
}

func describeExit(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "killed by signal " + ws.Signal().String()
		}
		return "exit status " + strconv.Itoa(ee.ExitCode())
	}
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// runOnce starts Envoy and waits for it. It returns how the process ended, or
// an error when it could not be started.
func (s *Supervisor) runOnce(ctx context.Context) (string, error) {
	args := []string{"-c", s.ConfigPath, "--disable-hot-restart", "--log-format", "[%l][%n] %v"}
	if s.LogLevel != "" {
		args = append(args, "--log-level", s.LogLevel)
	}
	if s.Concurrency > 0 {
		args = append(args, "--concurrency", strconv.Itoa(s.Concurrency))
	}
	args = append(args, s.ExtraArgs...)
	cmd := exec.Command(s.Bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return "", fmt.Errorf("envoy stderr pipe: %w", err)
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start envoy %s: %w", s.Bin, err)
	}
	s.mu.Lock()
	s.pid = cmd.Process.Pid
	s.starts++
	s.mu.Unlock()
	s.Log.WithFields(logrus.Fields{"pid": cmd.Process.Pid, "bin": s.Bin, "config": s.ConfigPath}).Info("Envoy started")

	logDone := make(chan struct{})
	go func() { defer close(logDone); forwardLog(stderr, s.Log) }()

	waitErr := make(chan error, 1)
	go func() { <-logDone; waitErr <- cmd.Wait() }()

	select {
	case err := <-waitErr:
		s.clearPID()
		return describeExit(err), nil
	case <-ctx.Done():
		s.stop(cmd, waitErr)
		s.clearPID()
		return "stopped", nil
	}
}

func (s *Supervisor) clearPID() {
	s.mu.Lock()
	s.pid = 0
	s.mu.Unlock()
}

// stop sends SIGTERM to Envoy's process group, then SIGKILL after the grace.
func (s *Supervisor) stop(cmd *exec.Cmd, waitErr <-chan error) {
	grace := s.StopGrace
	if grace <= 0 {
		grace = 5 * time.Second
	}
	pgid := cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-waitErr:
		s.Log.Info("Envoy stopped")
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-waitErr
		s.Log.Warn("Envoy did not stop after SIGTERM; killed it")
	}
}

// forwardLog turns Envoy's "[level][logger] message" lines into log entries.
func forwardLog(r io.Reader, log *logrus.Entry) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		level, rest := logrus.InfoLevel, line
		if strings.HasPrefix(line, "[") {
			if end := strings.IndexByte(line, ']'); end > 0 {
				switch line[1:end] {
				case "trace", "debug":
					level = logrus.DebugLevel
				case "warning":
					level = logrus.WarnLevel
				case "error", "critical":
					level = logrus.ErrorLevel
				}
				rest = line[end+1:]
			}
		}
		log.WithField("component", "envoy").Log(level, rest)
	}
}
