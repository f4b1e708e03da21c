package api

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/diffrouter/diffusion-router/loadboard"
	"github.com/diffrouter/diffusion-router/wire"
)

// filterSync takes one Envoy filter's load report and answers its view of
// the fleet (least-work routing). A worker Envoy reports failing health
// checks or ejected is left out of the view at once, before the fleet
// quarantines it.
func (f *filterAPI) filterSync(w http.ResponseWriter, r *http.Request) {
	if f.Board == nil {
		writeError(w, errorf(http.StatusNotFound, "least-work routing is off (--routing-algorithm): no filter sync"))
		return
	}
	var rep wire.LoadReport
	if err := f.readSigned(r, "filter sync", &rep); err != nil {
		writeError(w, err)
		return
	}
	// The signature checked out, so the time is the filter's own.
	signedAt, _ := strconv.ParseInt(r.Header.Get(wire.HeaderSyncTime), 10, 64)
	snap := f.fleet.Registry().Snapshot()
	view, err := f.Board.SyncSigned(rep, signedAt, snap, f.fleet.OutByEnvoy())
	switch {
	case errors.Is(err, loadboard.ErrClaimRefused):
		writeError(w, errorf(http.StatusConflict, "filter sync: %v", err))
		return
	case err != nil:
		writeError(w, errorf(http.StatusBadRequest, "load report: %v", err))
		return
	}
	if f.Queue != nil {
		// The report may have freed slots; the filters learn what waits
		// and how many requests each worker takes.
		f.Queue.Kick()
		view.Queued = f.Queue.Waiting()
		view.Paused = snap.Count().Paused(f.HoldWhileAsleep)
		for i := range view.Workers {
			if view.Workers[i].Slots == 0 {
				view.Workers[i].Slots = f.DefaultSlots
			}
		}
	}
	writeJSON(w, http.StatusOK, view)
}
