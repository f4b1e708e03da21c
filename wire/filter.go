package wire

import (
	"errors"
	"fmt"
	"math"
)

// FilterConfig is the Wasm filter's configuration: JSON, made by the control
// plane, readable on every Envoy's admin port (so it holds no secret).
type FilterConfig struct {
	// SecretEnv names the variable of the VM's environment that holds the
	// secret authenticating worker identities inside job ids; every Envoy of
	// one router has the same.
	SecretEnv string `json:"secret_env,omitempty"`
	// Secret is the secret itself, for tests; it wins over SecretEnv.
	Secret string `json:"secret,omitempty"`
	// FallbackRoute is the name of the route that takes requests naming a
	// model no worker lists (counted and logged once per name).
	FallbackRoute string `json:"fallback_route,omitempty"`
	// MaxBodyBytes bounds the bodies the filter reads; larger ones stream
	// through untouched.
	MaxBodyBytes int      `json:"max_body_bytes"`
	Defaults     Defaults `json:"defaults"`
	// FailClosed answers 500 when the filter itself fails (a host call
	// error); by default such requests pass through untouched.
	FailClosed bool `json:"fail_closed"`
	// Pick turns least-work routing on: the filter picks each generation's
	// worker (HeaderPick) and syncs with the control plane through
	// SyncCluster every SyncInterval.
	Pick        bool   `json:"pick,omitempty"`
	SyncCluster string `json:"sync_cluster,omitempty"`
	// Policy is how the filter picks: one whose spec says the filter
	// picks (Policy.Spec); empty: least-work.
	Policy Policy `json:"pick_policy,omitempty"`
	// JobsCluster is the control plane's API cluster, where the filter
	// records each video job's weight version and looks versions up to
	// sign job lists (package jobbook); empty: no book, list entries
	// carry ids without a version.
	JobsCluster string `json:"jobs_cluster,omitempty"`
	// RequestIdleMs cuts (408) a request whose body has not moved for
	// this long (0: never): a stalled client would otherwise hold its
	// connection, and its worker's slot, for ever.
	RequestIdleMs int64 `json:"request_idle_ms,omitempty"`
	// Queue turns the router-owned queue on (with Pick): a request that
	// finds no free slot waits in the control plane's queue (PathQueue)
	// for its turn instead of in a worker.
	Queue bool `json:"queue,omitempty"`
	// QueueWaitMs bounds the filter's wait for its turn (0: none); the
	// control plane answers first (--queue-timeout), this is the backstop.
	QueueWaitMs int64 `json:"queue_wait_ms,omitempty"`
	// HoldJobs (with Queue): a video create that finds no free slot goes
	// to the control plane (HeaderHeld), which answers it at once and
	// holds the job until its turn; calls about a held job's id and plain
	// job lists go there too.
	HoldJobs bool `json:"hold_jobs,omitempty"`
	// IgnoreClientPriority drops a client's HeaderPriority (every request
	// is priority 0); MaxClientPriority caps it.
	IgnoreClientPriority bool `json:"ignore_client_priority,omitempty"`
	MaxClientPriority    int  `json:"max_client_priority"`
	// IgnoreClientTenant drops a client's HeaderTenant; TrustBodyUser lets
	// the body's "user" (OpenAI's free-text end-user id) name the tenant
	// when no header does. Off by default: anyone could name a thousand
	// tenants and take a thousand shares.
	IgnoreClientTenant bool `json:"ignore_client_tenant,omitempty"`
	TrustBodyUser      bool `json:"trust_body_user,omitempty"`
	// Overdue and stalled requests (with Pick; overdue.go): a request
	// unanswered past max(OverdueFloorMs, OverdueFactor x its expected
	// time) makes its worker suspect; past max(StallFloorMs, StallFactor x
	// its expected time) it is answered 504 and its worker reported. A
	// factor of 0 turns its rule off.
	OverdueFactor  float64 `json:"overdue_factor,omitempty"`
	OverdueFloorMs int64   `json:"overdue_floor_ms,omitempty"`
	StallFactor    float64 `json:"stall_factor,omitempty"`
	StallFloorMs   int64   `json:"stall_floor_ms,omitempty"`
}

// Defaults are sglang-diffusion's values for fields a request leaves out;
// the cost estimate uses them.
type Defaults struct {
	Steps       int `json:"steps"`
	Width       int `json:"width"`
	Height      int `json:"height"`
	VideoFrames int `json:"video_frames"`
}

// MinSecret is the shortest job-id secret the filter accepts.
const MinSecret = 16

// MaxHeldBytes bounds what the filter may hold of one body. Envoy cuts a
// held body that outgrows the front listener's buffer limit, and one read
// from a worker can bring about 1 MiB at once; the control plane sizes that
// limit so that what is held plus one read always fits
// (translate.FrontBufferLimit).
const MaxHeldBytes = 1 << 20

// PickPolicy is the policy the filter picks by.
func (c FilterConfig) PickPolicy() Policy {
	if c.Policy == "" {
		return PolicyLeastWork
	}
	return c.Policy
}

// DefaultFilterConfig is the configuration the control plane sends, less
// the secret's source.
func DefaultFilterConfig() FilterConfig {
	return FilterConfig{
		FallbackRoute:     RouteModelFallback,
		MaxBodyBytes:      64 << 10,
		Defaults:          Defaults{Steps: 50, Width: 1024, Height: 1024, VideoFrames: 81},
		MaxClientPriority: MaxPriority,
	}
}

// Validate checks a configuration whose secret is resolved.
func (c FilterConfig) Validate() error {
	spec, err := c.PickPolicy().Spec()
	switch {
	case len(c.Secret) < MinSecret:
		return fmt.Errorf("secret must be at least %d characters", MinSecret)
	case c.MaxBodyBytes <= 0 || c.MaxBodyBytes > MaxHeldBytes:
		return fmt.Errorf("max_body_bytes must be in (0, %d]", MaxHeldBytes)
	case c.Defaults.Steps <= 0 || c.Defaults.Width <= 0 || c.Defaults.Height <= 0 || c.Defaults.VideoFrames <= 0:
		return errors.New("defaults must be positive")
	case c.RequestIdleMs < 0:
		return errors.New("request_idle_ms must not be negative")
	case c.Pick && c.SyncCluster == "":
		return errors.New("pick needs sync_cluster: the cluster of the control plane's API")
	case err != nil || !spec.FilterPicks:
		return fmt.Errorf("pick_policy %q: the filter does not pick by it (least-work, the default, or round-robin)", c.Policy)
	case c.Queue && (!c.Pick || !spec.Queue):
		return errors.New("queue needs pick: the queue grants workers least-work picks among")
	case c.QueueWaitMs < 0 || c.QueueWaitMs > math.MaxInt32:
		return fmt.Errorf("queue_wait_ms must be 0 to %d", math.MaxInt32)
	case c.MaxClientPriority < MinPriority || c.MaxClientPriority > MaxPriority:
		return fmt.Errorf("max_client_priority must be from %d to %d", MinPriority, MaxPriority)
	case c.OverdueFactor < 0 || c.StallFactor < 0 || c.OverdueFloorMs < 0 || c.StallFloorMs < 0:
		return errors.New("overdue and stall factors and floors must not be negative")
	}
	return nil
}
