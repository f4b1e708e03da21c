package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/diffrouter/diffusion-router/heldjobs"
	"github.com/diffrouter/diffusion-router/wire"
)

// The held video jobs' calls (package heldjobs): the filter sends here
// (wire.HeaderHeld) a video create that found no free slot, every call
// about a held job's id and plain job lists. Answers are the worker's, so
// clients cannot tell a held job from one a worker holds: a waiting job
// is "queued"; a sent one's calls go on to its worker through an Envoy,
// under its worker's id, and come back under the id its client holds.

// sendSettle bounds how long a call about a job being handed to its
// worker waits for the handing to end.
const sendSettle = 5 * time.Second

// held answers a call the filter sent to the held jobs.
func (s *Server) held(w http.ResponseWriter, r *http.Request) {
	if s.Held == nil {
		writeError(w, errorf(http.StatusNotFound, "this router holds no video jobs (--hold-video-jobs is off)"))
		return
	}
	path := r.URL.Path
	switch {
	case r.Header.Get(wire.HeaderHeld) == "create" && r.Method == http.MethodPost && (path == wire.PathVideos || path == wire.PathSeedVideo):
		s.heldCreate(w, r)
	case path == wire.PathVideos && r.Method == http.MethodGet:
		s.heldList(w, r)
	case strings.HasPrefix(path, wire.PathVideos+"/"):
		s.heldJob(w, r)
	default:
		writeError(w, errorf(http.StatusNotFound, "%s %s is not a call about a video job", r.Method, path))
	}
}

// heldCreate takes a create the filter found no free slot for: its ask
// (signed, as queue calls are) says how it queues and what the filter's
// Envoy counts now on the workers it weighed.
func (s *Server) heldCreate(w http.ResponseWriter, r *http.Request) {
	ask, signedAt, err := s.heldAsk(r)
	if err != nil {
		writeError(w, err)
		return
	}
	if s.Board != nil && len(ask.Hosts) > 0 {
		if err := s.Board.Note(ask.Node, ask.Hosts, signedAt); err != nil {
			writeError(w, errorf(http.StatusBadRequest, "held create: %v", err))
			return
		}
	}
	obj, err := s.Held.Take(r, ask)
	var ref *heldjobs.Refusal
	switch {
	case errors.As(err, &ref):
		if ref.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(ref.RetryAfter))
		}
		writeError(w, errorf(ref.Status, "%s", ref.Msg))
	case err != nil:
		s.Log.WithError(err).Error("holding a video job")
		writeError(w, errorf(http.StatusInternalServerError, "the router could not store the job: %v", err))
	default:
		writeJSON(w, http.StatusOK, obj)
	}
}

// heldJob answers a call about one job: /v1/videos/{id}[/...].
func (s *Server) heldJob(w http.ResponseWriter, r *http.Request) {
	rest := strings.TrimPrefix(r.URL.EscapedPath(), wire.PathVideos+"/")
	public, suffix, _ := strings.Cut(rest, "/")
	if suffix != "" {
		suffix = "/" + suffix
	}
	j, ok := s.Held.Lookup(public)
	for deadline := time.Now().Add(sendSettle); ok && j.State == heldjobs.Sending && time.Now().Before(deadline); {
		// Being handed to its worker (milliseconds): answered as what
		// it becomes.
		time.Sleep(10 * time.Millisecond)
		j, ok = s.Held.Lookup(public)
	}
	if !ok || j.State == heldjobs.Deleted {
		writeJSON(w, http.StatusNotFound, ErrorAnswer{Error: "video not found"})
		return
	}
	if j.State == heldjobs.Sent {
		target := wire.PathVideos + "/" + j.Wrapped + suffix
		if r.URL.RawQuery != "" {
			target += "?" + r.URL.RawQuery
		}
		s.relay(w, r, target, func(id string) (string, bool) { return public, id == j.Wrapped })
		return
	}
	status := "queued"
	if j.State == heldjobs.Failed {
		status = "failed"
	}
	switch {
	case suffix == "" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, heldObject(j, public))
	case suffix == "" && r.Method == http.MethodDelete:
		if j.State == heldjobs.Sending {
			writeError(w, errorf(http.StatusConflict, "the job is being handed to its worker; delete it again in a moment"))
			return
		}
		if j.State == heldjobs.Waiting {
			if err := s.Held.Delete(j.ID); err != nil && !errors.Is(err, heldjobs.ErrNotWaiting) {
				writeError(w, errorf(http.StatusInternalServerError, "%v", err))
				return
			}
		}
		writeJSON(w, http.StatusOK, map[string]any{"id": public, "object": "video.deleted", "deleted": true})
	case suffix == "/content" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusBadRequest, ErrorAnswer{Error: "video is " + status + ", not completed"})
	default:
		writeError(w, errorf(http.StatusMethodNotAllowed, "%s %s: a job waiting in the router takes GET, DELETE and GET .../content", r.Method, r.URL.Path))
	}
}

// heldObject is a held job as a worker shows one it has not started (or
// one that failed).
func heldObject(j heldjobs.Job, public string) heldjobs.Object {
	o := j.Object
	o.ID = public
	if j.State == heldjobs.Failed {
		o.Status = "failed"
		o.Error = &heldjobs.Error{Code: j.ErrorCode, Message: j.Error}
	}
	return o
}

// heldList is a worker's job list with the held jobs in it. Jobs that
// still wait are the newest of all (nothing is sent to a worker at once
// while jobs wait), so in the list's order (newest first by default, or
// ?order=asc) they come before (after) the worker's jobs; sent jobs show
// under the ids their clients hold. A ?video_id= or ?after= naming a held
// job is answered for it.
func (s *Server) heldList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	asc := strings.EqualFold(q.Get("order"), "asc")
	waiting := s.Held.Waiting() // oldest first
	askWorker, addWaiting := true, true
	if v := q.Get("video_id"); v != "" {
		addWaiting = false
		if j, ok := s.Held.Lookup(v); ok {
			if j.State != heldjobs.Sent {
				data := []heldjobs.Object{}
				if j.State != heldjobs.Deleted {
					data = append(data, heldObject(j, v))
				}
				writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data})
				return
			}
			q.Set("video_id", j.Wrapped)
		}
	}
	if v := q.Get("after"); v != "" {
		j, ok := s.Held.Lookup(v)
		i := slices.IndexFunc(waiting, func(x heldjobs.Job) bool { return x.ID == j.ID })
		switch {
		case ok && j.State == heldjobs.Sent:
			q.Set("after", j.Wrapped)
			addWaiting = asc
		case ok && i >= 0 && asc:
			// Past a waiting job: only newer waiting ones.
			waiting, askWorker = waiting[i+1:], false
		case ok && i >= 0:
			// Past a waiting job, newest first: the older waiting ones,
			// then the worker's whole list.
			waiting = waiting[:i]
			q.Del("after")
		default:
			// A worker's cursor: the waiting jobs came before it, newest
			// first, and come after its list oldest first.
			addWaiting = asc
		}
	}
	if !addWaiting {
		waiting = nil
	}
	list := struct {
		Object  string            `json:"object"`
		Data    []json.RawMessage `json:"data"`
		HasMore *bool             `json:"has_more,omitempty"`
	}{Object: "list"}
	if askWorker {
		target := wire.PathVideos
		if enc := q.Encode(); enc != "" {
			target += "?" + enc
		}
		resp, err := s.Held.Forward(r.Context(), http.MethodGet, target, r.Header, nil, true)
		if err != nil && len(waiting) == 0 {
			writeError(w, errorf(http.StatusBadGateway, "listing a worker's jobs: %v", err))
			return
		}
		if err == nil {
			defer resp.Body.Close()
			body, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
			if rerr != nil || resp.StatusCode != http.StatusOK || json.Unmarshal(body, &list) != nil {
				if len(waiting) == 0 {
					// Nothing held to show: the worker's answer as it is.
					copyHeaders(w.Header(), resp.Header)
					w.WriteHeader(resp.StatusCode)
					_, _ = w.Write(body)
					return
				}
				list.Data = nil
			}
			if v := resp.Header.Get(wire.HeaderWeightVersion); v != "" {
				w.Header().Set(wire.HeaderWeightVersion, v)
			}
		}
	}
	rename := func(wrapped string) (string, bool) {
		id, ok := s.Held.SentAs(wrapped)
		if !ok {
			return "", false
		}
		return s.Held.PublicID(id), true
	}
	for i, raw := range list.Data {
		list.Data[i] = renameIDs(raw, rename)
	}
	held := make([]json.RawMessage, 0, len(waiting))
	for _, j := range waiting {
		b, err := json.Marshal(heldObject(j, s.Held.PublicID(j.ID)))
		if err == nil {
			held = append(held, b)
		}
	}
	if asc {
		list.Data = append(list.Data, held...)
	} else {
		slices.Reverse(held)
		list.Data = append(held, list.Data...)
	}
	if n, err := strconv.Atoi(q.Get("limit")); err == nil && n > 0 && len(list.Data) > n {
		list.Data = list.Data[:n]
		more := true
		list.HasMore = &more
	}
	if list.Data == nil {
		list.Data = []json.RawMessage{}
	}
	list.Object = "list"
	writeJSON(w, http.StatusOK, list)
}

// renameIDs puts the id its client holds in place of a job object's
// worker id (b is one job object).
func renameIDs(b []byte, rename func(string) (string, bool)) []byte {
	var o struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(b, &o) != nil {
		return b
	}
	if to, ok := rename(o.ID); ok {
		return bytes.ReplaceAll(b, []byte(strconv.Quote(o.ID)), []byte(strconv.Quote(to)))
	}
	return b
}

// relay passes a call on through an Envoy and its answer back, JSON
// answers with rename applied.
func (s *Server) relay(w http.ResponseWriter, r *http.Request, target string, rename func(string) (string, bool)) {
	resp, err := s.Held.Forward(r.Context(), r.Method, target, r.Header, r.Body, false)
	if err != nil {
		writeError(w, errorf(http.StatusBadGateway, "passing the call to the job's worker: %v", err))
		return
	}
	defer resp.Body.Close()
	copyHeaders(w.Header(), resp.Header)
	if !strings.Contains(strings.ToLower(resp.Header.Get("Content-Type")), "json") {
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
		return
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		writeError(w, errorf(http.StatusBadGateway, "reading the worker's answer: %v", err))
		return
	}
	body = renameIDs(body, rename)
	w.Header().Del("Content-Length")
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(body)
}

// copyHeaders copies an answer's end-to-end headers.
func copyHeaders(dst, src http.Header) {
	for k, v := range src {
		switch http.CanonicalHeaderKey(k) {
		case "Connection", "Keep-Alive", "Transfer-Encoding", "Trailer", "Upgrade", "Content-Length":
		default:
			dst[k] = v
		}
	}
}

// heldAsk reads and checks a held create's ask (wire.HeaderHeldAsk).
func (s *Server) heldAsk(r *http.Request) (wire.QueueRequest, int64, error) {
	var ask wire.QueueRequest
	raw, err := base64.RawURLEncoding.DecodeString(r.Header.Get(wire.HeaderHeldAsk))
	if err != nil || len(raw) == 0 {
		return ask, 0, errorf(http.StatusBadRequest, "held create: %s is missing or not base64url", wire.HeaderHeldAsk)
	}
	signedAt := r.Header.Get(wire.HeaderSyncTime)
	if err := wire.CheckSyncSignature(s.SyncSecret, signedAt, r.Header.Get(wire.HeaderSyncSignature), raw, time.Now()); err != nil {
		return ask, 0, errorf(http.StatusForbidden, "held create: %v", err)
	}
	if err := json.Unmarshal(raw, &ask); err != nil {
		return ask, 0, errorf(http.StatusBadRequest, "held create: %s: %v", wire.HeaderHeldAsk, err)
	}
	if err := ask.Check(); err != nil {
		return ask, 0, errorf(http.StatusBadRequest, "held create: %v", err)
	}
	at, _ := strconv.ParseInt(signedAt, 10, 64)
	return ask, at, nil
}
