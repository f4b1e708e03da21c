package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/diffrouter/diffusion-router/fleet"
	"github.com/diffrouter/diffusion-router/registry"
)

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
