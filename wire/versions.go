package wire

import "fmt"

// Weight-version rules (issue 36): a request may name the weights that
// must serve it. They are queue rules: the control plane applies them
// when it grants a worker (package queue, version.go).
const (
	// HeaderPinVersion: served only by a worker holding exactly this
	// weight version.
	HeaderPinVersion = "x-diffusion-weight-version"
	// HeaderMinVersion: served only by a worker holding this version or
	// one the fleet had after it (its update history).
	HeaderMinVersion = "x-diffusion-min-weight-version"
	// HeaderGroup names the request's group: the group's requests are
	// served by the weight version its first granted request had.
	HeaderGroup = "x-diffusion-group"
	// MaxVersionLen bounds a version named in a header, MaxGroupLen a
	// group name.
	MaxVersionLen = 128
	MaxGroupLen   = 128
)

// CheckGroup checks a group name: 1 to MaxGroupLen letters, digits or
// ._:@/-.
func CheckGroup(g string) error {
	if len(g) == 0 || len(g) > MaxGroupLen {
		return fmt.Errorf("%s must be 1 to %d characters", HeaderGroup, MaxGroupLen)
	}
	for i := 0; i < len(g); i++ {
		switch c := g[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == ':', c == '@', c == '/', c == '-':
		default:
			return fmt.Errorf("%s must be letters, digits or ._:@/-", HeaderGroup)
		}
	}
	return nil
}

// CheckVersion checks a version named in header h: 1 to MaxVersionLen
// printable characters, no spaces.
func CheckVersion(h, v string) error {
	if len(v) == 0 || len(v) > MaxVersionLen {
		return fmt.Errorf("%s must be 1 to %d characters", h, MaxVersionLen)
	}
	for i := 0; i < len(v); i++ {
		if v[i] <= ' ' || v[i] >= 0x7f {
			return fmt.Errorf("%s must be printable characters without spaces", h)
		}
	}
	return nil
}

// AtLeast reports whether a worker holding have serves a request for min
// or later, by the fleet's history (its versions in the order it first had
// them): the same version, or one the fleet had after min.
func AtLeast(history []string, have, min string) bool {
	if have == min {
		return true
	}
	rm, rh := -1, -1
	for i, v := range history {
		switch v {
		case min:
			rm = i
		case have:
			rh = i
		}
	}
	return rm >= 0 && rh > rm
}
