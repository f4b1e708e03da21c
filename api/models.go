package api

import (
	"encoding/json"
	"net/http"

	"github.com/diffrouter/diffusion-router/registry"
)

// model answers GET /v1/models/{id} (the OpenAI SDK's models.retrieve) from
// the merged list: the entry of a worker that serves the id.
func (s *Server) model(w http.ResponseWriter, id string) {
	for _, raw := range s.mergedModels() {
		var e struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(raw, &e) == nil && e.ID == id {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(append(raw, '\n'))
			return
		}
	}
	writeError(w, errorf(http.StatusNotFound, "model %q is not served by any active worker (see GET /v1/models)", id))
}

// storeView says whether the registry store writes: while it fails, every
// change is refused with 503.
func storeView(reg registry.View) StoreView {
	failures, err := reg.StoreHealth()
	v := StoreView{Healthy: err == nil, WriteFailures: failures}
	if err != nil {
		v.Error = err.Error()
	}
	return v
}

// models merges the workers' /v1/models lists, one entry per model id.
func (s *Server) models(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, ModelsAnswer{Object: "list", Data: s.mergedModels()})
}

func (s *Server) mergedModels() []json.RawMessage {
	seen := map[string]bool{}
	data := []json.RawMessage{}
	for _, wk := range s.Fleet.Registry().Snapshot().Workers {
		if wk.State != registry.StateActive {
			continue
		}
		for i, raw := range wk.Caps.Models {
			key := string(raw)
			if i < len(wk.Caps.ModelIDs) {
				var e struct {
					ID string `json:"id"`
				}
				if json.Unmarshal(raw, &e) == nil && e.ID != "" {
					key = "id:" + e.ID
				}
			}
			if seen[key] {
				continue
			}
			seen[key] = true
			data = append(data, raw)
		}
	}
	return data
}
