package procgroup

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestStopEndsTheWholeGroup(t *testing.T) {
	// The leader starts a child that ignores SIGTERM; Stop must end both.
	cmd := exec.Command("sh", "-c", `sh -c 'trap "" TERM; while :; do sleep 1; done' & echo $!; wait`)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	g, err := Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Stop(time.Second)
	var child int
	buf := make([]byte, 32)
	n, err := out.Read(buf)
	if err != nil {
		t.Fatalf("read child pid: %v", err)
	}
	if _, err := fmt.Sscan(string(buf[:n]), &child); err != nil || child <= 0 {
		t.Fatalf("child pid %q: %v", buf[:n], err)
	}
	if g.Err() != nil {
		t.Fatalf("leader ended early: %v", g.Err())
	}
	g.Stop(200 * time.Millisecond)
	select {
	case <-g.Done():
	default:
		t.Fatal("Stop returned before the leader was reaped")
	}
	if g.Err() == nil {
		t.Fatal("Err is nil after the process exited")
	}
	deadline := time.Now().Add(5 * time.Second)
	for alive(child) {
		if time.Now().After(deadline) {
			t.Fatalf("child %d survived Stop", child)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStartReportsAMissingBinary(t *testing.T) {
	if _, err := Start(exec.Command("/nonexistent/binary")); err == nil {
		t.Fatal("Start of a missing binary succeeded")
	}
}

// alive reports whether pid runs: a zombie (dead, not yet reaped by
// whoever adopted it) does not.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
