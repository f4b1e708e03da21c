// Package version holds the release version: the one place it is written.
// The binary prints it (--version) and the Python wheel's build reads it
// from this file (pyproject.toml), so the two cannot disagree.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is the release. The wheel's build reads this line with a
// regular expression: keep it a plain string constant.
const Version = "0.9.0"

// String is what --version prints: the release, the commit it was built
// from when the build knew it, the Go release and the platform.
func String() string {
	return describe(Version, commit(), runtime.Version(), runtime.GOOS+"/"+runtime.GOARCH)
}

func describe(release, rev, goVersion, platform string) string {
	if rev == "" {
		return fmt.Sprintf("diffusion-router %s (%s, %s)", release, goVersion, platform)
	}
	return fmt.Sprintf("diffusion-router %s (commit %s, %s, %s)", release, rev, goVersion, platform)
}

// commit is the VCS revision the Go toolchain stamped into the binary
// (shortened; "+dirty" for a tree with changes), or "".
func commit() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var rev, dirty string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return ""
	}
	return rev + dirty
}
