package api

import (
	"net/http"

	"github.com/diffrouter/diffusion-router/fleet"
	"github.com/diffrouter/diffusion-router/loadboard"
	"github.com/diffrouter/diffusion-router/registry"
)

// observed is what the Envoys say about the workers: their requests and
// health flags, and (least-work routing) the filters' outstanding work.
type observed struct {
	loads    map[string]fleet.Load
	work     map[string]loadboard.HostLoad // nil when least-work is off
	suspects map[string]loadboard.Suspect
}

func (s *Server) observed() observed {
	o := observed{loads: s.Fleet.Loads()}
	if s.Board != nil {
		o.work, o.suspects = s.Board.Hosts(), s.Board.Suspects()
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
		WeightVersions:   versionsView(snap, s.Queue),
	})
}
