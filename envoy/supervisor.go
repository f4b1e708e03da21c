package envoy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
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
	// Env is added to the environment Envoy inherits ("KEY=value"); it is
	// where secrets for the Wasm VM travel, since configuration is readable
	// on the admin port.
	Env []string
	Log *logrus.Entry

	// MinBackoff and MaxBackoff bound the wait before a restart; the wait
	// doubles on each quick death and resets after a process lived long.
	MinBackoff, MaxBackoff time.Duration
	// StopGrace is how long Envoy gets after SIGTERM before SIGKILL.
	StopGrace time.Duration
	// PIDFile, if set, holds the running Envoy's pid, so that a control
	// plane restarted after a crash finds the Envoy that outlived it.
	PIDFile string
	// Adopt is the pid of an Envoy a previous control plane started (see
	// FindRunning): Run watches it instead of starting one, and starts a
	// new one only if it dies.
	Adopt int

	mu       sync.Mutex
	pid      int
	starts   int
	lastExit string
	// lastError is Envoy's latest error line: why it would not start.
	lastError string
	// serving: the caller saw Envoy ready (Serving). Until then an exit
	// ends Run with an error instead of a restart: a bad configuration or
	// a port in use would only fail again.
	serving bool
}

// Serving tells the supervisor that Envoy started and serves: from now on
// an exit is a crash, and Envoy is restarted.
func (s *Supervisor) Serving() {
	s.mu.Lock()
	s.serving = true
	s.mu.Unlock()
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
	if s.Adopt > 0 {
		exit := s.watchAdopted(ctx)
		if ctx.Err() != nil {
			return nil
		}
		s.Log.WithField("pid", s.Adopt).Errorf("adopted Envoy exited (%s); starting a new one", exit)
	}
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
		serving, why := s.serving, s.lastError
		s.mu.Unlock()
		if !serving {
			if why == "" {
				why = "no error logged"
			}
			return fmt.Errorf("envoy exited while starting (%s): %s", exit, why)
		}
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
	// Its own process group, so a terminal's Ctrl-C reaches only the
	// control plane, which drains Envoy first. No parent-death signal:
	// Envoy outlives a control plane that crashes and keeps routing on its
	// last configuration; the restarted control plane adopts it (PIDFile).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Env = append(os.Environ(), s.Env...)
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
	s.writePIDFile(cmd.Process.Pid)
	s.Log.WithFields(logrus.Fields{"pid": cmd.Process.Pid, "bin": s.Bin, "config": s.ConfigPath}).Info("Envoy started")

	logDone := make(chan struct{})
	go func() { defer close(logDone); forwardLog(stderr, s.Log, s.noteError) }()

	waitErr := make(chan error, 1)
	go func() { <-logDone; waitErr <- cmd.Wait() }()

	select {
	case err := <-waitErr:
		s.clearPID()
		return describeExit(err), nil
	case <-ctx.Done():
		s.stop(cmd.Process.Pid, waitErr)
		s.clearPID()
		return "stopped", nil
	}
}

func (s *Supervisor) writePIDFile(pid int) {
	if s.PIDFile == "" {
		return
	}
	if err := os.WriteFile(s.PIDFile, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		s.Log.WithError(err).Warn("cannot write Envoy's pid file; a restarted control plane will start a new Envoy")
	}
}

// watchAdopted follows an Envoy this process did not start until it exits
// or ctx ends (then it is stopped like an own one).
func (s *Supervisor) watchAdopted(ctx context.Context) string {
	pid := s.Adopt
	s.mu.Lock()
	s.pid, s.starts = pid, s.starts+1
	s.mu.Unlock()
	defer s.clearPID()
	s.writePIDFile(pid)
	s.Log.WithFields(logrus.Fields{"pid": pid, "config": s.ConfigPath}).Info("adopted the running Envoy")
	gone := make(chan error, 1)
	go func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if !running(pid, s.ConfigPath) {
					gone <- nil
					return
				}
			}
		}
	}()
	select {
	case <-gone:
		return "gone"
	case <-ctx.Done():
		exited := make(chan error, 1)
		go func() {
			for running(pid, s.ConfigPath) {
				time.Sleep(50 * time.Millisecond)
			}
			exited <- nil
		}()
		s.stop(pid, exited)
		return "stopped"
	}
}

// FindRunning returns the pid in pidFile if that process is alive and is an
// Envoy started with configPath: one a previous control plane started.
func FindRunning(pidFile, configPath string) (int, bool) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, running(pid, configPath)
}

// running reports whether pid is alive and runs Envoy with configPath (a
// pid can be reused by an unrelated process).
func running(pid int, configPath string) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	for i, a := range args {
		if a == "-c" && i+1 < len(args) && args[i+1] == configPath {
			return true
		}
	}
	return false
}

func (s *Supervisor) clearPID() {
	s.mu.Lock()
	s.pid = 0
	s.mu.Unlock()
}

// stop sends SIGTERM to Envoy, then SIGKILL after the grace, and removes
// the pid file.
func (s *Supervisor) stop(pid int, exited <-chan error) {
	grace := s.StopGrace
	if grace <= 0 {
		grace = 5 * time.Second
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-exited:
		s.Log.Info("Envoy stopped")
	case <-time.After(grace):
		_ = syscall.Kill(pid, syscall.SIGKILL)
		<-exited
		s.Log.Warn("Envoy did not stop after SIGTERM; killed it")
	}
	if s.PIDFile != "" {
		_ = os.Remove(s.PIDFile)
	}
}

// noteError keeps Envoy's latest error line.
func (s *Supervisor) noteError(line string) {
	s.mu.Lock()
	s.lastError = line
	s.mu.Unlock()
}

// forwardLog turns Envoy's "[level][logger] message" lines into log
// entries; errors are passed to onError too.
func forwardLog(r io.Reader, log *logrus.Entry, onError func(string)) {
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
		if level == logrus.ErrorLevel && onError != nil {
			onError(strings.TrimSpace(rest))
		}
		log.WithField("component", "envoy").Log(level, rest)
	}
}
