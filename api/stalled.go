package api

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/diffrouter/diffusion-router/fleet"
	"github.com/diffrouter/diffusion-router/loadboard"
	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/wire"
)

// StalledAnswer answers a filter's stall report: the worker it names, and
// whether this report quarantined it (false: it was out of rotation
// already, or is being removed).
type StalledAnswer struct {
	Worker      string `json:"worker"`
	Quarantined bool   `json:"quarantined"`
}

// stalled takes a worker on which a request ran past the stall limit (the
// filter answered it 504) out of rotation: quarantined like any failed
// worker, since a hung GPU may hold a broken state; an operator re-admits
// it.
func (f *filterAPI) stalled(w http.ResponseWriter, r *http.Request) {
	var rep wire.StallReport
	if err := f.readSigned(r, "stall report", &rep); err != nil {
		writeError(w, err)
		return
	}
	if err := rep.Check(); err != nil {
		writeError(w, errorf(http.StatusBadRequest, "stall report: %v", err))
		return
	}
	var key string
	for _, wk := range f.fleet.Registry().Snapshot().Workers {
		if loadboard.Addr(wk) == rep.Worker {
			key = wk.Key()
			break
		}
	}
	if key == "" {
		writeError(w, errorf(http.StatusNotFound, "stall report: no worker at %s", rep.Worker))
		return
	}
	reason := fmt.Sprintf("a request ran %.1f s without an answer (%.1f s expected; Envoy %s answered it 504): the GPU may hang",
		float64(rep.RanMs)/1000, float64(rep.ExpectedMs)/1000, rep.Node)
	_, _, err := f.fleet.Quarantine(r.Context(), key, fleet.CauseStalled, reason)
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, StalledAnswer{Worker: key, Quarantined: true})
	case errors.Is(err, registry.ErrConflict):
		// Another Envoy's report came first, or the worker left rotation
		// for another reason: nothing to do.
		writeJSON(w, http.StatusOK, StalledAnswer{Worker: key})
	default:
		writeError(w, err)
	}
}
