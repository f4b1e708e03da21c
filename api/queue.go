package api

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/queue"
	"github.com/diffrouter/diffusion-router/wire"
)

// queueOff answers when the router runs without its queue (q nil).
func queueOff(w http.ResponseWriter, q *queue.Queue) bool {
	if q == nil {
		writeError(w, errorf(http.StatusNotFound, "the router-owned queue is off (--queue)"))
		return true
	}
	return false
}

// queueWait holds a filter's request until the queue grants it a worker
// (200 QueueGrant), or answers why it never will: 429 with Retry-After
// (the queue or the tenant's share is full), 504 (its wait passed
// --queue-timeout), 409 (cancelled, its ticket already waits, or no worker
// holds the weight version it names and none will).
func (f *filterAPI) queueWait(w http.ResponseWriter, r *http.Request) {
	if queueOff(w, f.Queue) {
		return
	}
	var qr wire.QueueRequest
	if err := f.readSigned(r, "queue", &qr); err != nil {
		writeError(w, err)
		return
	}
	if err := qr.Check(); err != nil {
		writeError(w, errorf(http.StatusBadRequest, "queue: %v", err))
		return
	}
	if f.Board != nil && len(qr.Hosts) > 0 {
		// The signature checked out, so the time is the filter's own.
		signedAt, _ := strconv.ParseInt(r.Header.Get(wire.HeaderSyncTime), 10, 64)
		if err := f.Board.Note(qr.Node, qr.Hosts, signedAt); err != nil {
			writeError(w, errorf(http.StatusBadRequest, "queue: %v", err))
			return
		}
	}
	g, err := f.Queue.Wait(r.Context(), queue.Request{Key: queue.Key{Node: qr.Node, Ticket: qr.Ticket}, Priority: qr.Priority,
		Tenant: qr.Tenant, Cost: qr.Cost, Pool: leastwork.Pool(qr.Pool), Model: qr.Model, Version: qr.Version, MinVersion: qr.MinVersion, Group: qr.Group})
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, wire.QueueGrant{Worker: g.Worker, Second: g.Second})
	case errors.Is(err, queue.ErrFull), errors.Is(err, queue.ErrTenantFull):
		w.Header().Set("Retry-After", strconv.Itoa(f.retryAfter()))
		writeError(w, errorf(http.StatusTooManyRequests, "%v", err))
	case errors.Is(err, queue.ErrTimeout):
		writeError(w, errorf(http.StatusGatewayTimeout, "%v", err))
	case errors.Is(err, queue.ErrVersion):
		writeError(w, errorf(http.StatusConflict, "%v", err))
	case errors.Is(err, queue.ErrNoWorker):
		// The filter then routes as without the queue: Envoy's 503.
		writeError(w, errorf(http.StatusServiceUnavailable, "%v", err))
	default:
		writeError(w, errorf(http.StatusConflict, "%v", err))
	}
}

// retryAfter is the seconds a refused client is told to wait: about as
// long as the queue takes to drain a tenth of what waits, at least 1.
func (f *filterAPI) retryAfter() int {
	st := f.Queue.Status()
	return max(1, min(60, int(st.OldestWaitSeconds/10)+1))
}

// queueCancel takes a request whose client left out of the queue.
func (f *filterAPI) queueCancel(w http.ResponseWriter, r *http.Request) {
	if queueOff(w, f.Queue) {
		return
	}
	var c wire.QueueCancel
	if err := f.readSigned(r, "queue cancel", &c); err != nil {
		writeError(w, err)
		return
	}
	if c.Node == "" || c.Ticket == "" || len(c.Ticket) > wire.MaxTicketLen {
		writeError(w, errorf(http.StatusBadRequest, "queue cancel: \"node\" and \"ticket\" are required"))
		return
	}
	writeJSON(w, http.StatusOK, QueueCancelAnswer{Cancelled: f.Queue.Cancel(queue.Key{Node: c.Node, Ticket: c.Ticket})})
}

// queueStatus answers GET /queue.
func (s *Server) queueStatus(w http.ResponseWriter, _ *http.Request) {
	if queueOff(w, s.Queue) {
		return
	}
	a := QueueAnswer{Status: s.Queue.Status()}
	if s.Held != nil {
		st := s.Held.Status()
		a.HeldJobs = &st
	}
	writeJSON(w, http.StatusOK, a)
}
