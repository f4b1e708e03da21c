package api

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/diffrouter/diffusion-router/fleet"
	"github.com/diffrouter/diffusion-router/heldjobs"
	"github.com/diffrouter/diffusion-router/loadboard"
	"github.com/diffrouter/diffusion-router/queue"
	"github.com/diffrouter/diffusion-router/registry"
)

// The answers of the registry API. Their JSON names follow the Python
// routers' (sglang-diffusion-routing) where a client can tell, with the
// router's own fields on top; docs/api.md promises them, and
// answers_test.go holds the two to each other.

// ErrorAnswer is every error: {"error": "..."}.
type ErrorAnswer struct {
	Error string `json:"error"`
	// Running is the fleet operation that made a call wait (409).
	Running string `json:"running,omitempty"`
}

// WorkerView is one worker as the API shows it.
type WorkerView struct {
	WorkerID            string         `json:"worker_id"`
	DisplayID           string         `json:"display_id"`
	IsSleeping          bool           `json:"is_sleeping"`
	URL                 string         `json:"url"`
	Address             string         `json:"address"`
	State               registry.State `json:"state"`
	Reason              string         `json:"reason"`
	IsDead              bool           `json:"is_dead"`
	ConsecutiveFailures int            `json:"consecutive_failures"`
	// What the Envoys count.
	ActiveRequests      uint64 `json:"active_requests"`
	Requests            uint64 `json:"requests"`
	Errors              uint64 `json:"errors"`
	FailingHealthChecks bool   `json:"failing_health_checks"`
	Ejected             bool   `json:"ejected"`
	// Suspect: a request on the worker runs far past its expected time
	// (it may hang): no grants or picks until it answers.
	Suspect   *SuspectView `json:"suspect,omitempty"`
	TaskTypes []string     `json:"task_types"`
	Models    []string     `json:"models"`
	// VideoSupport is null until the worker's /v1/models was read.
	VideoSupport  *bool  `json:"video_support"`
	WeightVersion string `json:"weight_version"`
	// Slots is the worker's own number of requests at once under the
	// router-owned queue (absent: the router's --slots).
	Slots int `json:"slots,omitempty"`
	// With least-work routing: what the filters count and learned, and
	// the worker's own word when it serves one.
	OutstandingWork     *int64   `json:"outstanding_work,omitempty"`
	OutstandingRequests *int64   `json:"outstanding_requests,omitempty"`
	MsPerCost           *float64 `json:"ms_per_cost,omitempty"`
	WorkerQueued        *int64   `json:"worker_queued,omitempty"`
	WorkerRunning       *int64   `json:"worker_running,omitempty"`
	Since               string   `json:"since,omitempty"`
	AddedAt             string   `json:"added_at,omitempty"`
}

// AddAnswer answers POST /add_worker and POST /workers.
type AddAnswer struct {
	Status     string     `json:"status"`
	Added      bool       `json:"added"`
	Readmitted bool       `json:"readmitted"`
	Synced     bool       `json:"synced"`
	Envoys     int        `json:"envoys"`
	Worker     WorkerView `json:"worker"`
	URLs       []string   `json:"urls"`
	// WorkerURLs is URLs under the seed (Miles) router's name.
	WorkerURLs []string `json:"worker_urls"`
	// Routable: every Envoy routes to it now ("synced" says only that
	// they have the configuration).
	Routable           bool   `json:"routable"`
	Warning            string `json:"warning,omitempty"`
	NotRoutableBecause string `json:"not_routable_because,omitempty"`
	SameServerAs       string `json:"same_server_as,omitempty"`
	Note               string `json:"note,omitempty"`
}

// RemoveAnswer answers POST /remove_worker and DELETE /workers/{id}.
type RemoveAnswer struct {
	Status   string     `json:"status"`
	WorkerID string     `json:"worker_id"`
	Synced   bool       `json:"synced"`
	Worker   WorkerView `json:"worker"`
	URLs     []string   `json:"urls"`
}

// ListAnswer answers GET /list_workers.
type ListAnswer struct {
	URLs []string `json:"urls"`
}

// WorkersAnswer answers GET /workers.
type WorkersAnswer struct {
	Workers        []WorkerView `json:"workers"`
	WeightVersions VersionsView `json:"weight_versions"`
}

// VersionsView is the fleet's weight versions: every version it had, in
// the order it first had them (what a minimum version means), the version
// an update under way moves to, and how many workers hold each version
// now (any state).
type VersionsView struct {
	History  []string       `json:"history"`
	Updating string         `json:"updating,omitempty"`
	Workers  map[string]int `json:"workers"`
	// Groups are open groups (x-diffusion-group): the version each was
	// fixed to by its first grant, and its requests waiting; at most
	// maxShownGroups, those with requests waiting first. OpenGroups
	// counts them all.
	Groups     map[string]queue.GroupStatus `json:"groups,omitempty"`
	OpenGroups int                          `json:"open_groups"`
}

// maxShownGroups bounds the groups an answer lists (a trainer may keep
// thousands open).
const maxShownGroups = 100

func versionsView(snap registry.Snapshot, q *queue.Queue) VersionsView {
	v := VersionsView{History: snap.Fleet.History, Updating: snap.Fleet.Updating, Workers: map[string]int{}}
	if q != nil {
		all := q.Groups()
		v.OpenGroups = len(all)
		names := slices.Collect(maps.Keys(all))
		slices.SortFunc(names, func(a, b string) int {
			if wa, wb := all[a].Waiting > 0, all[b].Waiting > 0; wa != wb {
				if wa {
					return -1
				}
				return 1
			}
			return strings.Compare(a, b)
		})
		if len(names) > 0 {
			v.Groups = make(map[string]queue.GroupStatus, min(len(names), maxShownGroups))
			for _, name := range names[:min(len(names), maxShownGroups)] {
				v.Groups[name] = all[name]
			}
		}
	}
	if v.History == nil {
		v.History = []string{}
	}
	for _, w := range snap.Workers {
		v.Workers[w.WeightVersion]++
	}
	return v
}

// WorkerAnswer answers GET /workers/{id}.
type WorkerAnswer struct {
	Worker WorkerView `json:"worker"`
}

// ChangeAnswer answers PUT /workers/{id}; Synced is absent for a refresh
// of capabilities, which changes nothing Envoy routes by.
type ChangeAnswer struct {
	Status string     `json:"status"`
	Synced *bool      `json:"synced,omitempty"`
	Worker WorkerView `json:"worker"`
}

// HealthAnswer answers GET /health.
type HealthAnswer struct {
	Status           string    `json:"status"`
	HealthyWorkers   int       `json:"healthy_workers"`
	TotalWorkers     int       `json:"total_workers"`
	DeadWorkers      int       `json:"dead_workers"`
	DrainingWorkers  int       `json:"draining_workers"`
	SleepingWorkers  int       `json:"sleeping_workers"`
	Generation       uint64    `json:"generation"`
	WeightVersion    string    `json:"weight_version"`
	ModelPath        string    `json:"model_path"`
	RunningOperation string    `json:"running_operation"`
	Store            StoreView `json:"store"`
	// WeightVersions: the fleet's version history, workers per version.
	WeightVersions VersionsView `json:"weight_versions"`
}

// StoreView says whether the registry store writes: while it fails, every
// change is refused with 503.
type StoreView struct {
	Healthy       bool   `json:"healthy"`
	WriteFailures uint64 `json:"write_failures"`
	Error         string `json:"error,omitempty"`
}

// ModelsAnswer answers GET /v1/models.
type ModelsAnswer struct {
	Object string            `json:"object"`
	Data   []json.RawMessage `json:"data"`
}

// NothingToDoAnswer answers a fleet-wide call no worker needed (sleeping a
// sleeping fleet), as the Python routers do.
type NothingToDoAnswer struct {
	Status      string   `json:"status"`
	Message     string   `json:"message"`
	Results     []any    `json:"results"`
	Succeeded   int      `json:"succeeded"`
	Failed      int      `json:"failed"`
	Quarantined []string `json:"quarantined"`
}

// CallAnswer answers a fleet-wide call: the outcome, an error when some
// worker failed or all refused, and the call's own summary fields
// (get_weights_checksum's checksum, mismatched, consistent) beside them.
type CallAnswer struct {
	fleet.Outcome
	Error string `json:"error,omitempty"`
	// Extra are the call's own fields, merged into the object.
	Extra map[string]any `json:"-"`
}

// MarshalJSON writes the outcome's fields and Extra in one object.
func (a CallAnswer) MarshalJSON() ([]byte, error) {
	type plain CallAnswer // without this method
	b, err := json.Marshal(plain(a))
	if err != nil || len(a.Extra) == 0 {
		return b, err
	}
	var all map[string]any
	if err := json.Unmarshal(b, &all); err != nil {
		return nil, err
	}
	for k, v := range a.Extra {
		if _, taken := all[k]; !taken {
			all[k] = v
		}
	}
	return json.Marshal(all)
}

// UpdateAnswer answers POST /update_weights_from_disk.
type UpdateAnswer struct {
	fleet.UpdateOutcome
	Error string `json:"error,omitempty"`
}

// QueueCancelAnswer answers a filter's cancel: whether the request was
// still waiting.
type QueueCancelAnswer struct {
	Cancelled bool `json:"cancelled"`
}

// QueueAnswer answers GET /queue: the queue, and the video jobs the
// router holds (answered at create; they wait in the queue as requests of
// node heldjobs.Node) when it holds them.
type QueueAnswer struct {
	queue.Status
	HeldJobs *heldjobs.Status `json:"held_jobs,omitempty"`
}

// viewOf is a worker as the API shows it, with what the Envoys (and with
// least-work the filters) observe of it.
// SuspectView is why a worker is suspect: its longest-running request.
type SuspectView struct {
	RanSeconds      float64 `json:"ran_seconds"`
	ExpectedSeconds float64 `json:"expected_seconds"`
	Since           string  `json:"since"`
}

func viewOf(wk registry.Worker, seen observed) WorkerView {
	l := seen.loads[wk.Key()]
	v := WorkerView{
		WorkerID:            registry.EncodeID(wk.Key()),
		DisplayID:           wk.Key(),
		IsSleeping:          wk.Asleep,
		URL:                 wk.Key(),
		Address:             wk.Address,
		State:               wk.State,
		Reason:              wk.Reason,
		IsDead:              wk.State == registry.StateQuarantined,
		ConsecutiveFailures: wk.ConsecutiveFailures,
		ActiveRequests:      l.ActiveRequests,
		Requests:            l.Requests,
		Errors:              l.Errors,
		FailingHealthChecks: l.FailingHealthChecks,
		Ejected:             l.Ejected,
		TaskTypes:           nonNil(wk.Caps.TaskTypes),
		Models:              nonNil(wk.Caps.ModelIDs),
		WeightVersion:       wk.WeightVersion,
		Slots:               wk.Slots,
	}
	if wk.Caps.Known {
		video := wk.Caps.Video()
		v.VideoSupport = &video
	}
	if seen.work != nil {
		h := seen.work[loadboard.Addr(wk)]
		v.OutstandingWork, v.OutstandingRequests, v.MsPerCost = &h.Work, &h.Requests, &h.MsPerCost
		if h.Word != nil {
			v.WorkerQueued, v.WorkerRunning = &h.Word.Queued, &h.Word.Running
		}
	}
	if sp, ok := seen.suspects[loadboard.Addr(wk)]; ok {
		v.Suspect = &SuspectView{RanSeconds: float64(sp.RanMs) / 1000, ExpectedSeconds: float64(sp.ExpectedMs) / 1000,
			Since: sp.Since.UTC().Format(time.RFC3339Nano)}
	}
	if !wk.Since.IsZero() {
		v.Since = wk.Since.UTC().Format(time.RFC3339Nano)
	}
	if !wk.AddedAt.IsZero() {
		v.AddedAt = wk.AddedAt.UTC().Format(time.RFC3339Nano)
	}
	return v
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
