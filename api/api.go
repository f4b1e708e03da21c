// Package api is the registry's REST API, compatible with the Python
// diffusion routers. It is served on the control plane's own port and, through
// Envoy, on the front port.
package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/fleet"
	"github.com/diffrouter/diffusion-router/jobbook"
	"github.com/diffrouter/diffusion-router/loadboard"
	"github.com/diffrouter/diffusion-router/queue"
	"github.com/diffrouter/diffusion-router/registry"

	"github.com/diffrouter/diffusion-router/wire"
)

// MaxBodyBytes bounds every request body the registry reads.
const MaxBodyBytes = 1 << 20

// Server answers the registry API.
type Server struct {
	Fleet *fleet.Manager
	Log   *logrus.Entry
	// FanoutTimeout bounds each worker's answer to a fleet-wide call.
	FanoutTimeout time.Duration
	// QuarantineChecksumMismatch quarantines workers whose weights checksum
	// differs from the majority's.
	QuarantineChecksumMismatch bool
	// AdminToken, if set, is required as a bearer token on every call that
	// changes state, on the front port and the direct port alike.
	AdminToken string
	// Board, if set, takes the filters' load reports (least-work routing)
	// and adds each worker's outstanding work to GET /workers.
	Board *loadboard.Board
	// Jobs, if set, is the job book the filters record video jobs in.
	Jobs *jobbook.Book
	// SyncSecret is the job-id secret the filters sign their syncs with
	// (wire.SyncSignature); a sync that is not signed with it is refused.
	SyncSecret []byte
	// Metrics, if set, is served at /metrics. Envoy never routes /metrics
	// here (the front port's belongs to the workers), so it is reachable on
	// the direct port only.
	Metrics http.Handler
	// Queue, if set, is the router-owned queue: the filters wait in it
	// for their turn (wire.PathQueue), and it is shown at GET /queue.
	Queue *queue.Queue
	// DefaultSlots is how many requests a worker runs at once under the
	// queue, unless it has its own number (add_worker's "slots").
	DefaultSlots int
	// HoldWhileAsleep: requests wait in the queue while workers sleep.
	HoldWhileAsleep bool
}

// apiError is an error with the status it answers.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func errorf(status int, format string, a ...any) *apiError {
	return &apiError{status: status, msg: fmt.Sprintf(format, a...)}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		writeJSON(w, ae.status, ErrorAnswer{Error: ae.msg})
	case errors.Is(err, registry.ErrStore):
		// Nothing changed: the router does not answer what it cannot keep.
		writeJSON(w, http.StatusServiceUnavailable, ErrorAnswer{Error: err.Error()})
	case errors.Is(err, registry.ErrInvalidURL):
		writeJSON(w, http.StatusBadRequest, ErrorAnswer{Error: err.Error()})
	case errors.Is(err, registry.ErrNotFound):
		writeJSON(w, http.StatusNotFound, ErrorAnswer{Error: err.Error()})
	case errors.Is(err, fleet.ErrCatchUp):
		writeJSON(w, http.StatusBadGateway, ErrorAnswer{Error: err.Error()})
	case errors.Is(err, fleet.ErrUnreachable), errors.Is(err, fleet.ErrRejected), errors.Is(err, registry.ErrConflict):
		writeJSON(w, http.StatusConflict, ErrorAnswer{Error: err.Error()})
	default:
		writeJSON(w, http.StatusInternalServerError, ErrorAnswer{Error: err.Error()})
	}
}

// ServeHTTP dispatches by path. It does not use http.ServeMux because worker
// ids are URLs, and ServeMux would "clean" an unescaped one (http://h:1) and
// redirect.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if p := recover(); p != nil {
			s.Log.WithField("path", r.URL.Path).Errorf("panic in registry handler: %v", p)
			writeJSON(w, http.StatusInternalServerError, ErrorAnswer{Error: "internal error"})
		}
	}()
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	// Before the admin token: the filters hold no token. Syncs are signed
	// with the job-id secret, job records carry ids signed with it, and
	// versions are no secret.
	switch r.URL.Path {
	case wire.PathFilterSync:
		s.methods(w, r, map[string]http.HandlerFunc{http.MethodPost: s.filterSync})
		return
	case wire.PathJobRecord:
		s.methods(w, r, map[string]http.HandlerFunc{http.MethodPost: s.recordJobs})
		return
	case wire.PathJobVersions:
		s.methods(w, r, map[string]http.HandlerFunc{http.MethodPost: s.jobVersions})
		return
	case wire.PathQueue:
		s.methods(w, r, map[string]http.HandlerFunc{http.MethodPost: s.queueWait})
		return
	case wire.PathQueueCancel:
		s.methods(w, r, map[string]http.HandlerFunc{http.MethodPost: s.queueCancel})
		return
	}
	if s.AdminToken != "" && r.Method != http.MethodGet && r.Method != http.MethodHead && !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="diffusion-router"`)
		writeJSON(w, http.StatusUnauthorized, ErrorAnswer{Error: "this call changes the fleet and needs the admin token: Authorization: Bearer <token>"})
		return
	}
	path := r.URL.Path
	if strings.HasPrefix(path, "/workers/") {
		raw := r.URL.EscapedPath()
		s.methods(w, r, map[string]http.HandlerFunc{
			http.MethodGet:    func(w http.ResponseWriter, r *http.Request) { s.getWorker(w, r, raw) },
			http.MethodPut:    func(w http.ResponseWriter, r *http.Request) { s.putWorker(w, r, raw) },
			http.MethodDelete: func(w http.ResponseWriter, r *http.Request) { s.deleteWorker(w, r, raw) },
		})
		return
	}
	if id, ok := strings.CutPrefix(path, "/v1/models/"); ok {
		s.methods(w, r, map[string]http.HandlerFunc{http.MethodGet: func(w http.ResponseWriter, r *http.Request) { s.model(w, id) }})
		return
	}
	if slices.Contains(wire.FleetCallPaths, path) {
		s.methods(w, r, map[string]http.HandlerFunc{http.MethodPost: s.fanout})
		return
	}
	switch path {
	case "/metrics":
		if s.Metrics == nil {
			writeJSON(w, http.StatusNotFound, ErrorAnswer{Error: "metrics are not enabled"})
			return
		}
		s.methods(w, r, map[string]http.HandlerFunc{http.MethodGet: s.Metrics.ServeHTTP})
	default:
		byMethod, ok := s.registryEndpoints()[path]
		if !ok {
			writeJSON(w, http.StatusNotFound, ErrorAnswer{Error: "no registry endpoint " + path})
			return
		}
		s.methods(w, r, byMethod)
	}
}

// authorized checks the bearer token in constant time.
// registryEndpoints are the control plane's own paths and their methods.
func (s *Server) registryEndpoints() map[string]map[string]http.HandlerFunc {
	get := func(h http.HandlerFunc) map[string]http.HandlerFunc {
		return map[string]http.HandlerFunc{http.MethodGet: h}
	}
	return map[string]map[string]http.HandlerFunc{
		"/add_worker":        {http.MethodPost: s.addWorker},
		"/remove_worker":     {http.MethodPost: s.removeWorker},
		"/list_workers":      get(s.listWorkers),
		"/workers":           {http.MethodGet: s.getWorkers, http.MethodPost: s.addWorker},
		"/health":            get(s.health),
		"/health_workers":    get(s.getWorkers),
		"/v1/models":         get(s.models),
		wire.PathQueueStatus: get(s.queueStatus),
	}
}

func (s *Server) authorized(r *http.Request) bool {
	// The scheme is case-insensitive (RFC 7235); the token is not.
	scheme, got, ok := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
	return ok && strings.EqualFold(scheme, "Bearer") &&
		subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(s.AdminToken)) == 1
}

func (s *Server) methods(w http.ResponseWriter, r *http.Request, byMethod map[string]http.HandlerFunc) {
	h, ok := byMethod[r.Method]
	if !ok && r.Method == http.MethodHead {
		h, ok = byMethod[http.MethodGet]
	}
	if !ok {
		allowed := make([]string, 0, len(byMethod))
		for m := range byMethod {
			allowed = append(allowed, m)
		}
		slices.Sort(allowed)
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		writeJSON(w, http.StatusMethodNotAllowed, ErrorAnswer{Error: fmt.Sprintf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allowed, ", "))})
		return
	}
	h(w, r)
}

// requireJSON refuses a body not declared as JSON (415): a client that
// sends another type is not speaking this API.
func requireJSON(r *http.Request) error {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return errorf(http.StatusUnsupportedMediaType, "Content-Type must be application/json, not %q", r.Header.Get("Content-Type"))
	}
	return nil
}

// readBody reads the (size-limited) body.
func readBody(r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errorf(http.StatusRequestEntityTooLarge, "request body larger than %d bytes", MaxBodyBytes)
		}
		return nil, errorf(http.StatusBadRequest, "reading request body: %v", err)
	}
	return b, nil
}

// decodeObject parses a JSON object body; an empty body is an empty object.
func decodeObject(body []byte) (map[string]any, error) {
	if len(strings.TrimSpace(string(body))) == 0 {
		return map[string]any{}, nil
	}
	// Go's decoder would turn invalid UTF-8 into U+FFFD, and the workers and
	// the store would get a string the client never sent.
	if !utf8.Valid(body) {
		return nil, errorf(http.StatusBadRequest, "invalid JSON body: not valid UTF-8")
	}
	var v any
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, errorf(http.StatusBadRequest, "invalid JSON body: %v", err)
	}
	if dec.More() {
		return nil, errorf(http.StatusBadRequest, "invalid JSON body: trailing data after the object")
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, errorf(http.StatusBadRequest, "request body must be a JSON object")
	}
	return obj, nil
}

// readObject reads and parses a JSON object body.
func readObject(r *http.Request) ([]byte, map[string]any, error) {
	body, err := readBody(r)
	if err != nil {
		return nil, nil, err
	}
	obj, err := decodeObject(body)
	return body, obj, err
}

// workerURLFrom takes the worker URL from ?url= / ?worker_url= or from the
// JSON body's "url" / "worker_url", as the Python routers do.
func workerURLFrom(r *http.Request) (string, error) {
	u, _, err := workerRequest(r)
	return u, err
}

// workerRequest is workerURLFrom and the worker's "slots" (?slots= or the
// body's; 0 when not given): how many requests the router-owned queue
// lets it run at once, for workers that batch.
func workerRequest(r *http.Request) (string, int, error) {
	q := r.URL.Query()
	slots := 0
	if v := q.Get("slots"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > registry.MaxSlots {
			return "", 0, errorf(http.StatusBadRequest, "\"slots\" must be an integer from 1 to %d", registry.MaxSlots)
		}
		slots = n
	}
	for _, k := range []string{"url", "worker_url"} {
		if v := q.Get(k); v != "" {
			return v, slots, nil
		}
	}
	_, obj, err := readObject(r)
	if err != nil {
		return "", 0, err
	}
	if v, present := obj["slots"]; present {
		n, ok := v.(json.Number)
		i, err := n.Int64()
		if !ok || err != nil || i < 1 || i > registry.MaxSlots {
			return "", 0, errorf(http.StatusBadRequest, "\"slots\" must be an integer from 1 to %d", registry.MaxSlots)
		}
		slots = int(i)
	}
	for _, k := range []string{"url", "worker_url"} {
		v, present := obj[k]
		if !present || v == nil {
			continue
		}
		s, ok := v.(string)
		if !ok {
			return "", 0, errorf(http.StatusBadRequest, "%q must be a string", k)
		}
		return s, slots, nil
	}
	return "", 0, errorf(http.StatusBadRequest, "worker url is required: use ?url=... or a JSON body {\"url\": ...}")
}

func (s *Server) addWorker(w http.ResponseWriter, r *http.Request) {
	raw, slots, err := workerRequest(r)
	if err != nil {
		writeError(w, err)
		return
	}
	res, err := s.Fleet.Admit(r.Context(), raw)
	if err != nil {
		writeError(w, err)
		return
	}
	if slots > 0 {
		if res.Worker, err = s.Fleet.SetSlots(res.Worker.Key(), slots); err != nil {
			writeError(w, err)
			return
		}
	}
	// The Python routers answer 200 and "success" on both paths.
	urls := s.urls()
	out := AddAnswer{
		Status: "success", Added: res.Created, Readmitted: res.Revived, Synced: res.Synced, Envoys: res.Envoys,
		Worker: viewOf(res.Worker, s.observed()), URLs: urls, WorkerURLs: urls,
		Routable: res.Synced && res.HealthError == "",
	}
	if res.HealthError != "" {
		out.Warning = "worker registered, but its /health did not answer: " + res.HealthError
		out.NotRoutableBecause = "its /health did not answer; Envoy routes to it once a health check passes (checked about once a second)"
	} else if !res.Synced {
		out.NotRoutableBecause = "the Envoys did not report it healthy within --sync-timeout"
	}
	if res.SameServerAs != "" {
		out.SameServerAs = res.SameServerAs
		out.Note = "this url names the server already registered as " + res.SameServerAs + " (same scheme, address and port): it is that worker"
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) removeWorker(w http.ResponseWriter, r *http.Request) {
	raw, err := workerURLFrom(r)
	if err != nil {
		writeError(w, err)
		return
	}
	s.remove(w, r.Context(), raw, false)
}

func (s *Server) remove(w http.ResponseWriter, ctx context.Context, raw string, decoded bool) {
	var u registry.WorkerURL
	var err error
	if decoded {
		u, err = registry.DecodeID(raw)
	} else {
		u, err = registry.ParseWorkerURL(raw)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	wk, synced, err := s.Fleet.Remove(ctx, u.String())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, RemoveAnswer{Status: "success", WorkerID: registry.EncodeID(wk.Key()), Synced: synced,
		Worker: viewOf(wk, s.observed()), URLs: s.urls()})
}

func (s *Server) urls() []string {
	snap := s.Fleet.Registry().Snapshot()
	out := make([]string, 0, len(snap.Workers))
	for _, w := range snap.Workers {
		out = append(out, w.Key())
	}
	return out
}

func (s *Server) listWorkers(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, ListAnswer{URLs: s.urls()})
}

func (s *Server) getWorkers(w http.ResponseWriter, _ *http.Request) {
	seen := s.observed()
	snap := s.Fleet.Registry().Snapshot()
	out := make([]WorkerView, 0, len(snap.Workers))
	for _, wk := range snap.Workers {
		out = append(out, viewOf(wk, seen))
	}
	writeJSON(w, http.StatusOK, WorkersAnswer{Workers: out})
}

func (s *Server) lookup(raw string) (registry.Worker, error) {
	id := strings.TrimPrefix(raw, "/workers/")
	u, err := registry.DecodeID(id)
	if err != nil {
		return registry.Worker{}, err
	}
	wk, ok := s.Fleet.Registry().Get(u.String())
	if !ok {
		return registry.Worker{}, fmt.Errorf("worker %s: %w", u.String(), registry.ErrNotFound)
	}
	return wk, nil
}

func (s *Server) getWorker(w http.ResponseWriter, _ *http.Request, raw string) {
	wk, err := s.lookup(raw)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, WorkerAnswer{Worker: viewOf(wk, s.observed())})
}

// putWorker sets is_dead: true quarantines, false re-admits (after a
// passing /health).
func (s *Server) putWorker(w http.ResponseWriter, r *http.Request, raw string) {
	wk, err := s.lookup(raw)
	if err != nil {
		writeError(w, err)
		return
	}
	_, obj, err := readObject(r)
	if err != nil {
		writeError(w, err)
		return
	}
	for k := range obj {
		if k != "is_dead" && k != "refresh_video_support" {
			writeError(w, errorf(http.StatusBadRequest, "unknown field %q (PUT /workers/{id} takes {\"is_dead\": bool, \"refresh_video_support\": bool})", k))
			return
		}
	}
	deadV, hasDead := obj["is_dead"]
	dead, ok := deadV.(bool)
	if hasDead && !ok {
		writeError(w, errorf(http.StatusBadRequest, "\"is_dead\" must be a boolean"))
		return
	}
	refreshV, hasRefresh := obj["refresh_video_support"]
	refresh, ok := refreshV.(bool)
	if hasRefresh && !ok {
		writeError(w, errorf(http.StatusBadRequest, "\"refresh_video_support\" must be a boolean"))
		return
	}
	if !hasDead && !refresh {
		writeError(w, errorf(http.StatusBadRequest, "give \"is_dead\" (bool) or \"refresh_video_support\": true"))
		return
	}
	if !hasDead {
		// Re-read the worker's /v1/models, as the Python routers do.
		if wk, err = s.Fleet.RefreshCapabilities(r.Context(), wk.Key()); err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, ChangeAnswer{Status: "success", Worker: viewOf(wk, s.observed())})
		return
	}
	var synced bool
	if dead && wk.State == registry.StateDraining {
		// The operator's removal wins: it ends with the worker gone.
		writeError(w, errorf(http.StatusConflict, "worker %s is being removed (draining): it leaves the fleet once its requests finish, so it is not quarantined; re-add it to keep it", wk.Key()))
		return
	}
	if dead {
		wk, synced, err = s.Fleet.Quarantine(r.Context(), wk.Key(), fleet.CauseMarkedDead, "marked dead by operator")
	} else {
		var res fleet.AdmitResult
		res, err = s.Fleet.Admit(r.Context(), wk.Key())
		wk, synced = res.Worker, res.Synced
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ChangeAnswer{Status: "success", Synced: &synced, Worker: viewOf(wk, s.observed())})
}

func (s *Server) deleteWorker(w http.ResponseWriter, r *http.Request, raw string) {
	s.remove(w, r.Context(), strings.TrimPrefix(raw, "/workers/"), true)
}

// observed is what the Envoys say about the workers: their requests and
// health flags, and (least-work routing) the filters' outstanding work.
type observed struct {
	loads map[string]fleet.Load
	work  map[string]loadboard.HostLoad // nil when least-work is off
}

func (s *Server) observed() observed {
	o := observed{loads: s.Fleet.Loads()}
	if s.Board != nil {
		o.work = s.Board.Hosts()
	}
	return o
}

// servable counts workers that Envoy would route a request to now: active,
// listed by the Envoys (a new worker waits for its first health check
// there), and not failing health checks or ejected. Without a readable
// Envoy admin interface the registry's word is all there is.
func servable(snap registry.Snapshot, loads map[string]fleet.Load, observable bool) int {
	n := 0
	for _, w := range snap.Workers {
		l := loads[w.Key()]
		if w.Routable() && (l.Seen || !observable) && !l.FailingHealthChecks && !l.Ejected {
			n++
		}
	}
	return n
}

func (s *Server) health(w http.ResponseWriter, _ *http.Request) {
	snap := s.Fleet.Registry().Snapshot()
	healthy := servable(snap, s.Fleet.Loads(), s.Fleet.Observable())
	status, code := "healthy", http.StatusOK
	if healthy == 0 {
		status, code = "unhealthy", http.StatusServiceUnavailable
	}
	counts := snap.Count()
	writeJSON(w, code, HealthAnswer{
		Status: status, HealthyWorkers: healthy, TotalWorkers: counts.Total,
		DeadWorkers: counts.ByState[registry.StateQuarantined], DrainingWorkers: counts.ByState[registry.StateDraining],
		SleepingWorkers: counts.Asleep,
		Generation:      snap.Generation, WeightVersion: snap.Fleet.Version, ModelPath: snap.Fleet.ModelPath,
		RunningOperation: s.Fleet.Running(),
		Store:            storeView(s.Fleet.Registry()),
	})
}

// model answers GET /v1/models/{id} (the OpenAI SDK's models.retrieve) from
// the merged list: the entry of a worker that serves the id.
func (s *Server) model(w http.ResponseWriter, id string) {
	for _, raw := range s.mergedModels() {
		var e struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(raw, &e) == nil && e.ID == id {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(append(raw, '\n'))
			return
		}
	}
	writeError(w, errorf(http.StatusNotFound, "model %q is not served by any active worker (see GET /v1/models)", id))
}

// storeView says whether the registry store writes: while it fails, every
// change is refused with 503.
func storeView(reg registry.View) StoreView {
	failures, err := reg.StoreHealth()
	v := StoreView{Healthy: err == nil, WriteFailures: failures}
	if err != nil {
		v.Error = err.Error()
	}
	return v
}

// models merges the workers' /v1/models lists, one entry per model id.
func (s *Server) models(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, ModelsAnswer{Object: "list", Data: s.mergedModels()})
}

func (s *Server) mergedModels() []json.RawMessage {
	seen := map[string]bool{}
	data := []json.RawMessage{}
	for _, wk := range s.Fleet.Registry().Snapshot().Workers {
		if wk.State != registry.StateActive {
			continue
		}
		for i, raw := range wk.Caps.Models {
			key := string(raw)
			if i < len(wk.Caps.ModelIDs) {
				var e struct {
					ID string `json:"id"`
				}
				if json.Unmarshal(raw, &e) == nil && e.ID != "" {
					key = "id:" + e.ID
				}
			}
			if seen[key] {
				continue
			}
			seen[key] = true
			data = append(data, raw)
		}
	}
	return data
}

// fanout handles the fleet-wide control calls.
func (s *Server) fanout(w http.ResponseWriter, r *http.Request) {
	body, obj, err := readObject(r)
	if err != nil {
		writeError(w, err)
		return
	}
	if len(body) == 0 {
		body = []byte("{}")
	}
	if fleet.Broadcasts[r.URL.Path].Weights {
		s.updateWeights(w, r, obj)
		return
	}
	res, err := s.Fleet.RunBroadcast(r.Context(), r.URL.Path, body,
		fleet.BroadcastOptions{Timeout: s.FanoutTimeout, QuarantineSuspects: s.QuarantineChecksumMismatch})
	if err != nil {
		s.fleetError(w, r.URL.Path, err)
		return
	}
	if res.NothingToDo != "" {
		// Sleeping a sleeping fleet (or waking an awake one) is harmless,
		// as with the Python routers: nothing to do is a success.
		writeJSON(w, http.StatusOK, NothingToDoAnswer{Status: "success", Message: res.NothingToDo, Results: []any{},
			Quarantined: []string{}})
		return
	}
	ans := CallAnswer{Outcome: res.Outcome, Extra: res.Fields}
	status := outcomeStatus(r.URL.Path, res.Outcome, &ans.Error)
	writeJSON(w, status, ans)
}

func (s *Server) fleetError(w http.ResponseWriter, path string, err error) {
	var busy *fleet.BusyError
	switch {
	case errors.As(err, &busy):
		writeJSON(w, http.StatusConflict, ErrorAnswer{Error: busy.Error(), Running: busy.Running})
	case errors.Is(err, fleet.ErrNoTargets):
		writeError(w, errorf(http.StatusServiceUnavailable, "No healthy workers available in the pool for %s", path))
	default:
		writeError(w, err)
	}
}

// outcomeStatus is a fleet-wide call's status: 200 only when every
// targeted worker succeeded; 400 when every worker refused the request
// alike (nothing changed), else 502. It sets *msg to the error to show.
func outcomeStatus(path string, out fleet.Outcome, msg *string) int {
	switch {
	case out.Rejected:
		*msg = fmt.Sprintf("every worker refused %s with status %d; no worker was changed or quarantined", path, out.Results[0].StatusCode)
		return http.StatusBadRequest
	case out.Failed > 0:
		*msg = fmt.Sprintf("%d of %d workers failed %s", out.Failed, len(out.Results), path)
		return http.StatusBadGateway
	}
	return http.StatusOK
}

// updateWeights validates an update_weights_from_disk body and runs it.
// The router's own fields (weight_version, mode, max_unavailable) are taken
// out; everything else goes to the workers as sent.
func (s *Server) updateWeights(w http.ResponseWriter, r *http.Request, obj map[string]any) {
	if p, ok := obj["model_path"].(string); !ok || strings.TrimSpace(p) == "" {
		writeError(w, errorf(http.StatusBadRequest, "\"model_path\" is required and must be a non-empty string"))
		return
	} else if !registry.ValidName(p) {
		writeError(w, errorf(http.StatusBadRequest, "\"model_path\" must be at most 1024 bytes without control characters"))
		return
	}
	spec := fleet.UpdateSpec{Mode: fleet.ModeInplace, MaxUnavailable: 1, Timeout: s.FanoutTimeout, Request: map[string]any{}}
	for k, v := range obj {
		switch k {
		case "weight_version":
			switch x := v.(type) {
			case string:
				spec.Version = x
			case json.Number:
				spec.Version = x.String()
			default:
				writeError(w, errorf(http.StatusBadRequest, "\"weight_version\" must be a string or a number"))
				return
			}
			if !registry.ValidVersion(spec.Version) {
				writeError(w, errorf(http.StatusBadRequest, "\"weight_version\" must be 1 to 128 visible ASCII characters (0x21-0x7E: no spaces or control characters); it is sent to clients in the x-weight-version header"))
				return
			}
		case "mode":
			m, _ := v.(string)
			if m != fleet.ModeInplace && m != fleet.ModeDrain {
				writeError(w, errorf(http.StatusBadRequest, "\"mode\" must be %q or %q", fleet.ModeInplace, fleet.ModeDrain))
				return
			}
			spec.Mode = m
		case "max_unavailable":
			n, ok := v.(json.Number)
			i, err := n.Int64()
			if !ok || err != nil || i < 1 || i > 1<<20 {
				writeError(w, errorf(http.StatusBadRequest, "\"max_unavailable\" must be a positive integer"))
				return
			}
			spec.MaxUnavailable = int(i)
		default:
			spec.Request[k] = v
		}
	}
	out, err := s.Fleet.UpdateWeights(r.Context(), spec)
	if err != nil {
		s.fleetError(w, r.URL.Path, err)
		return
	}
	ans := UpdateAnswer{UpdateOutcome: out}
	status := outcomeStatus(r.URL.Path, out.Outcome, &ans.Error)
	writeJSON(w, status, ans)
}
