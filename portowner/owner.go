// Package portowner names the process listening on a TCP port, so that a
// router that cannot take its port says who holds it, and counts the
// connections to a port (the benchmarks). It reads Linux's /proc;
// elsewhere, or for another user's process, it finds nothing.
package portowner

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Process is a listening socket's owner.
type Process struct {
	PID     int
	Command string // its command line, arguments joined by spaces
}

func (p Process) String() string {
	if p.PID == 0 {
		return "an unknown process"
	}
	return fmt.Sprintf("pid %d (%s)", p.PID, p.Command)
}

// Find returns a process listening on port (any local address), if this
// user may see it; ok is true also when the port is held by a process it
// may not see (then p is zero).
func Find(port int) (p Process, ok bool) {
	all, held := holders("/proc", port)
	if len(all) > 0 {
		return all[0], true
	}
	return Process{}, held
}

// Holders returns every process listening on port that this user may see:
// more than one means they share it (SO_REUSEPORT).
func Holders(port int) []Process {
	all, _ := holders("/proc", port)
	return all
}

func holders(proc string, port int) (found []Process, held bool) {
	inodes := map[string]bool{}
	for _, f := range []string{"net/tcp", "net/tcp6"} {
		for _, ino := range listening(filepath.Join(proc, f), port) {
			inodes["socket:["+ino+"]"] = true
		}
	}
	if len(inodes) == 0 {
		return nil, false
	}
	pids, _ := filepath.Glob(filepath.Join(proc, "[0-9]*"))
	for _, dir := range pids {
		fds, _ := os.ReadDir(filepath.Join(dir, "fd"))
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
			if err != nil || !inodes[link] {
				continue
			}
			pid, _ := strconv.Atoi(filepath.Base(dir))
			found = append(found, Process{PID: pid, Command: command(dir)})
			break
		}
	}
	return found, true
}

// TCP states in /proc/net/tcp.
const (
	stateEstablished = "01"
	stateListen      = "0A"
)

// listening returns the inodes of the sockets in a /proc/net/tcp table
// that listen on port.
func listening(table string, port int) []string {
	var out []string
	sockets(table, port, stateListen, func(inode string) { out = append(out, inode) })
	return out
}

// Established counts the established TCP connections whose local port is
// port (a server's side of each connection to it), from /proc/net/tcp
// and tcp6 (-1: unreadable).
func Established(port int) int {
	n, read := 0, false
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		read = sockets(table, port, stateEstablished, func(string) { n++ }) || read
	}
	if !read {
		return -1
	}
	return n
}

// sockets calls each with the inode of every socket in a /proc/net/tcp
// table in state whose local port is port; it reports whether the table
// could be read.
func sockets(table string, port int, state string, each func(inode string)) bool {
	f, err := os.Open(table)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // the header line
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[3] != state {
			continue
		}
		i := strings.LastIndexByte(fields[1], ':')
		p, err := strconv.ParseUint(fields[1][i+1:], 16, 16)
		if i < 0 || err != nil || int(p) != port {
			continue
		}
		each(fields[9])
	}
	return true
}

func command(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil {
		return "?"
	}
	cmd := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
	if len(cmd) > 160 {
		cmd = cmd[:160] + "..."
	}
	return cmd
}
