// Package procgroup runs child processes that lead their own process group, so
// that stopping one stops everything it started (Envoy's children, a
// router's demo workers), also when the parent is the one that fails.
package procgroup

import (
	"errors"
	"fmt"
	"os/exec"
	"syscall"
	"time"
)

// Group is a started process and its process group.
type Group struct {
	PID  int
	done chan struct{}
	err  error // the process's exit, once done is closed
}

// Start starts cmd as the leader of a new process group and reaps it in the
// background.
func Start(cmd *exec.Cmd) (*Group, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	g := &Group{PID: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		g.err = cmd.Wait()
		close(g.done)
	}()
	return g, nil
}

// Done is closed when the process has exited.
func (g *Group) Done() <-chan struct{} { return g.done }

// Err is how the process exited; nil before it has.
func (g *Group) Err() error {
	select {
	case <-g.done:
		if g.err == nil {
			return errors.New("exited")
		}
		return g.err
	default:
		return nil
	}
}

// Stop asks the whole group to end (SIGTERM), waits up to grace for the
// leader, then kills the group. It returns once the leader has been reaped;
// calling it again is harmless.
func (g *Group) Stop(grace time.Duration) {
	_ = syscall.Kill(-g.PID, syscall.SIGTERM)
	select {
	case <-g.done:
	case <-time.After(grace):
		_ = syscall.Kill(-g.PID, syscall.SIGKILL)
		<-g.done
	}
	// Children that ignored SIGTERM go with the leader.
	_ = syscall.Kill(-g.PID, syscall.SIGKILL)
}
