package wire

import (
	"fmt"
	"strconv"
)

// The router-owned queue (package queue). A filter that finds no free slot
// for a request pauses it and asks the control plane for its turn with a
// QueueRequest at PathQueue (signed as syncs are); the answer, when the
// turn comes, is a QueueGrant. A client that leaves meanwhile is taken out
// with PathQueueCancel. Both are on the control plane's API port only.
const (
	PathQueue       = "/_router/queue"
	PathQueueCancel = "/_router/queue/cancel"
	// PathQueueStatus shows the queue (a registry path: on the front port
	// too).
	PathQueueStatus = "/queue"

	// HeaderPriority is a request's priority: an integer from MinPriority
	// to MaxPriority, higher first (default 0).
	HeaderPriority = "x-diffusion-priority"
	// HeaderTenant names who a request is for (default: the body's
	// "user", else DefaultTenant); tenants share the fleet by GPU time.
	HeaderTenant = "x-diffusion-tenant"
	// HeaderQueueMs is how long a request waited in the router's queue
	// (ms), set by the filter when it is granted a worker: for traces
	// and the worker's logs.
	HeaderQueueMs = "x-diffusion-queue-ms"

	MinPriority   = -1000
	MaxPriority   = 1000
	DefaultTenant = "default"
	// MaxTenantLen bounds a tenant name.
	MaxTenantLen = 64
	// MaxTicketLen bounds a queue ticket.
	MaxTicketLen = 64
)

// QueueRequest asks for a worker for one request.
type QueueRequest struct {
	// Node is the Envoy that holds the request (its sync node name) and
	// Ticket the request's own name there.
	Node     string `json:"node"`
	Ticket   string `json:"ticket"`
	Priority int    `json:"priority"`
	Tenant   string `json:"tenant"`
	Cost     int64  `json:"cost"`
	// Pool is the kind of worker it needs (leastwork.Pool).
	Pool  int    `json:"pool"`
	Model string `json:"model,omitempty"`
	// Hosts are what this Envoy counts now on the workers it weighed for
	// the request (at most leastwork.SampleSize): fresher than its last
	// report, so the queue does not grant a slot this Envoy just took.
	Hosts []HostReport `json:"hosts,omitempty"`
	// Version and MinVersion are the request's weight-version rules
	// (HeaderPinVersion, HeaderMinVersion; "": none).
	Version    string `json:"weight_version,omitempty"`
	MinVersion string `json:"min_weight_version,omitempty"`
	// Group is the request's group (HeaderGroup; "": none).
	Group string `json:"group,omitempty"`
}

// QueueGrant is the worker a queued request goes to, and the next best.
type QueueGrant struct {
	Worker string `json:"worker"`
	Second string `json:"second,omitempty"`
}

// QueueCancel takes a queued request out.
type QueueCancel struct {
	Node   string `json:"node"`
	Ticket string `json:"ticket"`
}

// ParsePriority reads a priority header value ("" is 0).
func ParsePriority(v string) (int, error) {
	if v == "" {
		return 0, nil
	}
	p, err := strconv.Atoi(v)
	if err != nil || p < MinPriority || p > MaxPriority {
		return 0, fmt.Errorf("%s must be an integer from %d to %d, not %q", HeaderPriority, MinPriority, MaxPriority, v)
	}
	return p, nil
}

// ValidTenant reports whether s may name a tenant: 1 to MaxTenantLen
// letters, digits and ._:@- (it goes into headers, logs and the queue's
// state).
func ValidTenant(s string) bool {
	if len(s) == 0 || len(s) > MaxTenantLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == ':', c == '@', c == '-':
		default:
			return false
		}
	}
	return true
}

// Check validates a queue request.
func (r QueueRequest) Check() error {
	switch {
	case r.Node == "" || len(r.Node) > 256:
		return fmt.Errorf("\"node\" must be 1 to 256 characters")
	case r.Ticket == "" || len(r.Ticket) > MaxTicketLen:
		return fmt.Errorf("\"ticket\" must be 1 to %d characters", MaxTicketLen)
	case r.Priority < MinPriority || r.Priority > MaxPriority:
		return fmt.Errorf("\"priority\" must be from %d to %d", MinPriority, MaxPriority)
	case !ValidTenant(r.Tenant):
		return fmt.Errorf("\"tenant\" must be 1 to %d letters, digits or ._:@-", MaxTenantLen)
	case r.Cost < 0 || r.Cost > MaxReportedCost:
		return fmt.Errorf("\"cost\" must be 0 to %d", MaxReportedCost)
	case r.Pool < 0 || r.Pool > 2:
		return fmt.Errorf("\"pool\" must be 0 (any), 1 (image) or 2 (video)")
	case len(r.Model) > 512:
		return fmt.Errorf("\"model\" is over 512 bytes")
	case len(r.Hosts) > 64:
		return fmt.Errorf("at most 64 \"hosts\"")
	}
	if r.Group != "" {
		if err := CheckGroup(r.Group); err != nil {
			return err
		}
	}
	for name, v := range map[string]string{"weight_version": r.Version, "min_weight_version": r.MinVersion} {
		if v != "" {
			if err := CheckVersion(`"`+name+`"`, v); err != nil {
				return err
			}
		}
	}
	return nil
}
