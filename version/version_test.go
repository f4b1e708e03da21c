package version

import (
	"os"
	"regexp"
	"testing"
)

func TestDescribe(t *testing.T) {
	tests := []struct {
		rev, want string
	}{
		{"", "diffusion-router 1.2.3 (go1.26.0, linux/amd64)"},
		{"abc123+dirty", "diffusion-router 1.2.3 (commit abc123+dirty, go1.26.0, linux/amd64)"},
	}
	for _, tt := range tests {
		if got := describe("1.2.3", tt.rev, "go1.26.0", "linux/amd64"); got != tt.want {
			t.Errorf("describe(rev %q) = %q, want %q", tt.rev, got, tt.want)
		}
	}
}

// TestVersionLineReadable holds the contract with pyproject.toml: the wheel's
// build finds the version in this file with this pattern, and it must be a
// version pip accepts (PEP 440's public form, as we release it).
func TestVersionLineReadable(t *testing.T) {
	src, err := os.ReadFile("version.go")
	if err != nil {
		t.Fatal(err)
	}
	pyproject, err := os.ReadFile("../pyproject.toml")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^pattern = '(.+)'$`).FindSubmatch(pyproject)
	if m == nil {
		t.Fatal("pyproject.toml has no [tool.hatch.version] pattern line")
	}
	// Python's (?P<name>) is Go's too.
	got := regexp.MustCompile(string(m[1])).FindSubmatch(src)
	if got == nil {
		t.Fatalf("pyproject.toml's pattern %s finds nothing in version.go", m[1])
	}
	if string(got[1]) != Version {
		t.Fatalf("pyproject.toml reads %q, the binary says %q", got[1], Version)
	}
	if !regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(Version) {
		t.Fatalf("Version %q is not MAJOR.MINOR.PATCH", Version)
	}
}
