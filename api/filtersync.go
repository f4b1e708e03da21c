package api

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/diffrouter/diffusion-router/loadboard"
	"github.com/diffrouter/diffusion-router/wire"
)

// filterSync takes one Envoy filter's load report and answers its view of
// the fleet (least-work routing). A worker Envoy reports failing health
// checks or ejected is left out of the view at once, before the fleet
// quarantines it.
func (s *Server) filterSync(w http.ResponseWriter, r *http.Request) {
	if s.Board == nil {
		writeError(w, errorf(http.StatusNotFound, "least-work routing is off (--routing-algorithm): no filter sync"))
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeError(w, errorf(http.StatusRequestEntityTooLarge, "body too large or unreadable: %v", err))
		return
	}
	if len(s.SyncSecret) == 0 {
		writeError(w, errorf(http.StatusInternalServerError, "filter sync has no secret to check signatures with"))
		return
	}
	if err := wire.CheckSyncSignature(s.SyncSecret, r.Header.Get(wire.HeaderSyncTime), r.Header.Get(wire.HeaderSyncSignature), body, time.Now()); err != nil {
		writeError(w, errorf(http.StatusUnauthorized, "filter sync: %v", err))
		return
	}
	if err := requireJSON(r); err != nil {
		writeError(w, err)
		return
	}
	var rep wire.LoadReport
	if err := decodeStrictBody(body, &rep); err != nil {
		writeError(w, errorf(http.StatusBadRequest, "load report: %v", err))
		return
	}
	// The signature checked out, so the time is the filter's own.
	signedAt, _ := strconv.ParseInt(r.Header.Get(wire.HeaderSyncTime), 10, 64)
	loads := s.Fleet.Loads()
	out := func(key string) bool { l := loads[key]; return l.FailingHealthChecks || l.Ejected }
	view, err := s.Board.SyncSigned(rep, signedAt, s.Fleet.Registry().Snapshot(), out)
	switch {
	case errors.Is(err, loadboard.ErrClaimRefused):
		writeError(w, errorf(http.StatusConflict, "filter sync: %v", err))
		return
	case err != nil:
		writeError(w, errorf(http.StatusBadRequest, "load report: %v", err))
		return
	}
	writeJSON(w, http.StatusOK, view)
}
