// Package portowner names the process listening on a TCP port, so that a
// router that cannot take its port says who holds it. It reads Linux's
// /proc; elsewhere, or for another user's process, it finds nothing.
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

// listening returns the inodes of the sockets in a /proc/net/tcp table
// that listen on port.
func listening(table string, port int) []string {
	f, err := os.Open(table)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Scan() // the header line
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[3] != "0A" { // 0A: LISTEN
			continue
		}
		i := strings.LastIndexByte(fields[1], ':')
		p, err := strconv.ParseUint(fields[1][i+1:], 16, 16)
		if i < 0 || err != nil || int(p) != port {
			continue
		}
		out = append(out, fields[9])
	}
	return out
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
