// Package api is the registry's REST API, compatible with the Python
// diffusion routers. It is served on the control plane's own port and, through
// Envoy, on the front port.
package api

import (
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/fleet"
	"github.com/diffrouter/diffusion-router/heldjobs"
	"github.com/diffrouter/diffusion-router/jobbook"
	"github.com/diffrouter/diffusion-router/loadboard"
	"github.com/diffrouter/diffusion-router/queue"

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
	// Held, if set, holds video jobs that found no free slot (package
	// heldjobs): the filter sends their calls here (wire.HeaderHeld).
	Held *heldjobs.Holder
	// HoldWhileAsleep: requests wait in the queue while workers sleep.
	HoldWhileAsleep bool
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
	if r.Header.Get(wire.HeaderHeld) != "" {
		// Video calls the filter sent (held jobs): the public video API,
		// bodies bounded by --max-held-bytes.
		s.held(w, r)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	// Before the admin token: the filters hold no token. Syncs are signed
	// with the job-id secret, job records carry ids signed with it, and
	// versions are no secret.
	if h := s.filters().handler(r.URL.Path); h != nil {
		s.methods(w, r, map[string]http.HandlerFunc{http.MethodPost: h})
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
