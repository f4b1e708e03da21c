package api

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/queue"
	"github.com/diffrouter/diffusion-router/wire"
)

// readSigned reads a filter's body signed with the job-id secret (as
// syncs are) into the wire type v.
func (s *Server) readSigned(r *http.Request, what string, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return errorf(http.StatusRequestEntityTooLarge, "body too large or unreadable: %v", err)
	}
	if len(s.SyncSecret) == 0 {
		return errorf(http.StatusInternalServerError, "%s has no secret to check signatures with", what)
	}
	if err := wire.CheckSyncSignature(s.SyncSecret, r.Header.Get(wire.HeaderSyncTime), r.Header.Get(wire.HeaderSyncSignature), body, time.Now()); err != nil {
		return errorf(http.StatusUnauthorized, "%s: %v", what, err)
	}
	if err := requireJSON(r); err != nil {
		return err
	}
	if err := decodeStrictBody(body, v); err != nil {
		return errorf(http.StatusBadRequest, "%s: invalid JSON body: %v", what, err)
	}
	return nil
}

// queueOff answers when the router runs without its queue.
func (s *Server) queueOff(w http.ResponseWriter) bool {
	if s.Queue == nil {
		writeError(w, errorf(http.StatusNotFound, "the router-owned queue is off (--queue)"))
		return true
	}
	return false
}

// queueWait holds a filter's request until the queue grants it a worker
// (200 QueueGrant), or answers why it never will: 429 with Retry-After
// (the queue or the tenant's share is full), 504 (its wait passed
// --queue-timeout), 409 (cancelled, or its ticket already waits).
func (s *Server) queueWait(w http.ResponseWriter, r *http.Request) {
	if s.queueOff(w) {
		return
	}
	var qr wire.QueueRequest
	if err := s.readSigned(r, "queue", &qr); err != nil {
		writeError(w, err)
		return
	}
	if err := qr.Check(); err != nil {
		writeError(w, errorf(http.StatusBadRequest, "queue: %v", err))
		return
	}
	if s.Board != nil && len(qr.Hosts) > 0 {
		// The signature checked out, so the time is the filter's own.
		signedAt, _ := strconv.ParseInt(r.Header.Get(wire.HeaderSyncTime), 10, 64)
		if err := s.Board.Note(qr.Node, qr.Hosts, signedAt); err != nil {
			writeError(w, errorf(http.StatusBadRequest, "queue: %v", err))
			return
		}
	}
	g, err := s.Queue.Wait(r.Context(), queue.Request{Key: queue.Key{Node: qr.Node, Ticket: qr.Ticket}, Priority: qr.Priority,
		Tenant: qr.Tenant, Cost: qr.Cost, Pool: leastwork.Pool(qr.Pool), Model: qr.Model})
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, wire.QueueGrant{Worker: g.Worker, Second: g.Second})
	case errors.Is(err, queue.ErrFull), errors.Is(err, queue.ErrTenantFull), errors.Is(err, queue.ErrTooMany):
		w.Header().Set("Retry-After", strconv.Itoa(s.retryAfter()))
		writeError(w, errorf(http.StatusTooManyRequests, "%v", err))
	case errors.Is(err, queue.ErrTimeout):
		writeError(w, errorf(http.StatusGatewayTimeout, "%v", err))
	case errors.Is(err, queue.ErrNoWorker):
		// The filter then routes as without the queue: Envoy's 503.
		writeError(w, errorf(http.StatusServiceUnavailable, "%v", err))
	default:
		writeError(w, errorf(http.StatusConflict, "%v", err))
	}
}

// retryAfter is the seconds a refused client is told to wait: about as
// long as the queue takes to drain a tenth of what waits, at least 1.
func (s *Server) retryAfter() int {
	st := s.Queue.Status()
	return max(1, min(60, int(st.OldestWaitSeconds/10)+1))
}

// queueCancel takes a request whose client left out of the queue.
func (s *Server) queueCancel(w http.ResponseWriter, r *http.Request) {
	if s.queueOff(w) {
		return
	}
	var c wire.QueueCancel
	if err := s.readSigned(r, "queue cancel", &c); err != nil {
		writeError(w, err)
		return
	}
	if c.Node == "" || c.Ticket == "" || len(c.Ticket) > wire.MaxTicketLen {
		writeError(w, errorf(http.StatusBadRequest, "queue cancel: \"node\" and \"ticket\" are required"))
		return
	}
	writeJSON(w, http.StatusOK, QueueCancelAnswer{Cancelled: s.Queue.Cancel(queue.Key{Node: c.Node, Ticket: c.Ticket})})
}

// queueStatus answers GET /queue.
func (s *Server) queueStatus(w http.ResponseWriter, _ *http.Request) {
	if s.queueOff(w) {
		return
	}
	writeJSON(w, http.StatusOK, s.Queue.Status())
}
