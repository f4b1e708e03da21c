package wire

import (
	"errors"
	"time"
)

// Overdue requests. A filter watches each request it picked a worker for:
// one still unanswered far past its expected time (FilterConfig's
// OverdueFactor and OverdueFloorMs) makes its worker suspect, which the
// filter says in its load reports (HostReport.Overdue) until the request
// ends; one past the stall limit (StallFactor, StallFloorMs) is answered
// 504 by the filter, which reports the worker at PathStalled (signed as
// syncs are) for the control plane to quarantine.
const PathStalled = "/_router/stalled"

// Defaults of the router's flags for the rules above. A diffusion request
// takes seconds to minutes: the floors keep a short request's estimate
// from making a slow minute look like a hang.
const (
	DefaultOverdueFactor = 4
	DefaultOverdueFloor  = 30 * time.Second
	DefaultStallFactor   = 10
	DefaultStallFloor    = 5 * time.Minute
)

// Overdue is a worker's oldest overdue request as one Envoy saw it.
type Overdue struct {
	// RanMs is how long it had run; ExpectedMs what least-work expected
	// of it (0: no estimate yet; only the floor applied).
	RanMs      int64 `json:"ran_ms"`
	ExpectedMs int64 `json:"expected_ms"`
}

// StallReport says a request ran past the stall limit on a worker (its
// address, as in the pick view) and was answered 504.
type StallReport struct {
	Node   string `json:"node"`
	Worker string `json:"worker"`
	Overdue
}

// Check validates a stall report.
func (r StallReport) Check() error {
	switch {
	case r.Node == "" || r.Worker == "":
		return errors.New(`"node" and "worker" are required`)
	case r.RanMs <= 0 || r.ExpectedMs < 0:
		return errors.New(`"ran_ms" must be positive and "expected_ms" not negative`)
	}
	return nil
}
