package router

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// stateLockFile is held (flock) by the router that runs on a state
// directory, and names its pid.
const stateLockFile = "router.lock"

// defaultStateDir is where a router without --state-dir keeps its state:
// one directory per user and front port, so that a router restarted after
// a crash (kill -9) finds the Envoy the crashed one left on that port and
// adopts it. It is removed when the router stops.
func defaultStateDir(port int) string {
	return filepath.Join(os.TempDir(), "diffusion-router-"+strconv.Itoa(os.Getuid()), "port-"+strconv.Itoa(port))
}

// lockStateDir takes the directory for this process, or says which router
// holds it. The lock ends with the process, however it ends.
func lockStateDir(dir string) (release func(), err error) {
	path := filepath.Join(dir, stateLockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock state directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		holder := strings.TrimSpace(string(b))
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another diffusion-router (pid %s) runs on state directory %s; stop it, or give this one another --port or --state-dir", holder, dir)
		}
		return nil, fmt.Errorf("lock state directory %s: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() { f.Close() }, nil
}
