package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/diffrouter/diffusion-router/fleet"
	"github.com/diffrouter/diffusion-router/registry"
)

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
	writeJSON(w, http.StatusOK, WorkersAnswer{Workers: out, WeightVersions: versionsView(snap, s.Queue)})
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
