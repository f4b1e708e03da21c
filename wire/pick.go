package wire

import "time"

// Least-work routing: the filter picks the worker, Envoy's override_host
// load-balancing policy sends the request there.
const (
	// HeaderPick carries the filter's choice of worker ("ip:port") and
	// HeaderPickRetry the one a retry takes. Two headers, not one list:
	// override_host reads one address per source. Only the filter sets
	// them: a client's are removed.
	HeaderPick      = "x-diffusion-pick"
	HeaderPickRetry = "x-diffusion-pick-retry"

	// PathFilterSync is where each Envoy's filter posts its outstanding
	// work (a LoadReport) and gets the fleet's view (a PickView). The
	// control plane answers it on its API port only: the front routes do
	// not lead there.
	PathFilterSync = "/_router/filter-sync"
	// PathInternalPrefix starts every path only the filters call (sync,
	// queue, job records): the control plane does not trace them.
	PathInternalPrefix = "/_router/"

	// SyncInterval is how often a filter syncs with the control plane.
	SyncInterval = 100 * time.Millisecond
	// ViewTTL is how long a view stays usable without a fresh one: a filter
	// whose last view is older stops picking (Envoy's own policy takes
	// over), and the control plane stops counting its report. A drain
	// waits until every picking filter has seen it, or this long.
	ViewTTL = time.Second
)

// PickView is what the control plane tells each filter: the workers it may
// pick from and the work other Envoys have sent them.
type PickView struct {
	// Generation is the registry generation the view reflects; the filter
	// reports it back, and a drain waits for it.
	Generation uint64 `json:"generation"`
	// Workers are the eligible ones: active, awake, not failing health
	// checks, not ejected. Draining, updating, quarantined and unknown
	// workers are not listed.
	Workers []PickWorker `json:"workers"`
	// Envoys counts the Envoys reporting load. With more than one, each
	// sees only part of every worker's queue, so the speeds the control
	// plane learned from all their completions (MsPerCost, Base) are the
	// ones to pick with.
	Envoys int `json:"envoys"`
	// Base is the fixed part of a request in cost units, fitted over
	// every Envoy's completions (0: not yet).
	Base float64 `json:"base,omitempty"`
	// Ejection is when Envoy's outlier detection ejects a worker: the
	// filter holds a worker back from its picks from the same point
	// (override_host does not look at ejections), not earlier, so
	// Envoy's count, and the quarantine it leads to, are not delayed.
	Ejection Ejection `json:"ejection,omitzero"`
	// Finished are video jobs other Envoys saw end lately: an Envoy that
	// counts one of them stops, and learns its worker's speed from the
	// job's GPU time.
	Finished []EndedJob `json:"finished,omitempty"`
	// Queued counts the requests waiting in the router-owned queue: while
	// any wait, a filter sends every new request there too, so none
	// passes them.
	Queued int `json:"queued,omitempty"`
	// Paused: some workers are out of rotation for a weight update (or
	// asleep, with --queue-while-asleep) and will be back; a request none
	// of the listed workers can take waits in the router-owned queue for
	// them instead of failing.
	Paused bool `json:"paused,omitempty"`
}

// EndedJob is a video job an Envoy saw end.
type EndedJob struct {
	// ID is the worker's own job id.
	ID string `json:"id"`
	// GPUMs is the GPU time the worker reported for a completed job
	// (inference_time_s, in ms); 0 when it did not complete or did not say.
	GPUMs float64 `json:"gpu_ms,omitempty"`
}

// MaxJobID bounds a job id a report relays.
const MaxJobID = 256

// MaxJobGPUMs bounds a relayed job's GPU time: a day.
const MaxJobGPUMs = 24 * 3600 * 1000.0

// Bounds on the numbers one Envoy may report for one worker, far above any
// real load, so that sums over every Envoy (MaxNodes of them) and with the
// picker's own cost arithmetic cannot overflow int64.
const (
	MaxReportedWork     = int64(1) << 40
	MaxReportedRequests = int64(1) << 24
	// MaxReportedCost bounds one completion's cost, as the filter's
	// estimates are bounded.
	MaxReportedCost = int64(1) << 40
)

// Ejection is Envoy's outlier-detection threshold: this many 5xx answers
// in a row, or this many gateway failures (502, 503, 504, connection
// failures, resets, timeouts) in a row. Zero fields: two.
type Ejection struct {
	Consecutive5xx     int64 `json:"consecutive_5xx,omitempty"`
	ConsecutiveGateway int64 `json:"consecutive_gateway,omitempty"`
}

// EjectionAfter is the ejection rule for n failures in a row: any 5xx n
// times, and a worker that cannot be reached or does not answer after two
// (one reset can be a healthy worker closing an idle keep-alive connection
// just as Envoy reused it).
func EjectionAfter(n int64) Ejection {
	return Ejection{Consecutive5xx: n, ConsecutiveGateway: min(2, n)}
}

// PickWorker is one eligible worker.
type PickWorker struct {
	// Addr is the worker's address as Envoy's host map names it: "ip:port",
	// "[v6]:port".
	Addr string `json:"addr"`
	// Version is the weight version the worker holds.
	Version string   `json:"version,omitempty"`
	Video   bool     `json:"video,omitempty"`
	Image   bool     `json:"image,omitempty"`
	Models  []string `json:"models,omitempty"`
	// RemoteWork and RemoteRequests are the outstanding work and requests
	// other Envoys have sent it.
	RemoteWork     int64 `json:"remote_work,omitempty"`
	RemoteRequests int64 `json:"remote_requests,omitempty"`
	// MsPerCost is the worker's speed learned from every Envoy's
	// completions (0: none yet).
	MsPerCost float64 `json:"ms_per_cost,omitempty"`
	// The worker's own word (package workerword), when it serves one and
	// the reading is fresh: ForeignRequests are requests it holds that no
	// Envoy counts (another client's); IdleAt (µs, the control plane's
	// clock) is when it said it held none at all, so every job counted
	// on it from before then has ended.
	ForeignRequests int64 `json:"foreign_requests,omitempty"`
	IdleAt          int64 `json:"idle_at,omitempty"`
	// Slots is how many requests the worker runs at once with the
	// router-owned queue (0: one).
	Slots int `json:"slots,omitempty"`
}

// LoadReport is what one Envoy's filter reports at each sync.
type LoadReport struct {
	// Node is the Envoy's node id (unique per replica).
	Node string `json:"node"`
	// Generation is the generation of the view the filter picks with (0:
	// it has none, or it is too old to pick with).
	Generation uint64 `json:"generation"`
	// Hosts are the workers this Envoy has work counted on (an idle one
	// adds nothing to the others' views, so it is left out: the report
	// stays small on a large fleet).
	Hosts []HostReport `json:"hosts"`
	// Completions are the requests workers answered since the last
	// report, for the fleet-wide speed estimate.
	Completions []Completion `json:"completions,omitempty"`
	// Finished are video jobs this Envoy saw end (a poll's answer, a
	// delete) and does not count itself: another Envoy may.
	Finished []EndedJob `json:"finished,omitempty"`
	// Freed are the workers a request (or video job) just left: a report
	// sent at once because a slot freed while requests wait says where,
	// so the router's queue sees the end when it happens.
	Freed []string `json:"freed,omitempty"`
}

// Completion is one answered request: its worker, estimated cost, and
// when it was sent and answered (µs since the epoch, the Envoy's clock).
type Completion struct {
	Addr string `json:"addr"`
	Cost int64  `json:"cost"`
	Sent int64  `json:"sent"`
	Done int64  `json:"done"`
	// GPU: Sent to Done is the worker's own measure of the GPU time (a
	// video job's inference_time_s), not a send-to-answer interval: it
	// teaches the speed as it is, outside the answer-order merge.
	GPU bool `json:"gpu,omitempty"`
}

// HostReport is one worker as one Envoy's filter sees it.
type HostReport struct {
	Addr     string `json:"addr"`
	Work     int64  `json:"work"`
	Requests int64  `json:"requests"`
	// MsPerCost is this Envoy's learned milliseconds per unit of
	// effective cost (0: not yet).
	MsPerCost float64 `json:"ms_per_cost,omitempty"`
	Samples   int64   `json:"samples,omitempty"`
	// Failing: this Envoy saw the worker fail as often in a row as the
	// ejection rule says, just now (leastwork.Failing): the router's queue
	// grants it nothing meanwhile, as the filter picks it for nothing.
	Failing bool `json:"failing,omitempty"`
	// Overdue: a request on the worker runs far past its expected time
	// (see PathStalled): the worker is suspect, granted and picked
	// nothing, until the request ends.
	Overdue *Overdue `json:"overdue,omitempty"`
}
