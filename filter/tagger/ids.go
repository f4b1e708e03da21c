package tagger

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/diffrouter/diffusion-router/filter/jobid"
)

// WrapIDs makes the job ids in a worker's JSON answer carry the worker: the
// top-level "id", and in "data" each item's "id" and the id inside a
// "/v1/{images,videos}/{id}/content" url. It reports whether anything changed.
func WrapIDs(body []byte, s jobid.Signer, workerKey string) ([]byte, bool, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber() // keep numbers exactly as the worker wrote them
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		return nil, false, fmt.Errorf("response is not a JSON object: %w", err)
	}
	changed := wrapField(doc, "id", s, workerKey)
	if items, ok := doc["data"].([]any); ok {
		for _, it := range items {
			obj, ok := it.(map[string]any)
			if !ok {
				continue
			}
			changed = wrapField(obj, "id", s, workerKey) || changed
			if u, ok := obj["url"].(string); ok {
				if prefix, id, suffix, ok := jobPath(u); ok && suffix == "/content" {
					if _, _, wrapped := s.Unwrap(id); !wrapped {
						// The query stays: sglang tells the images of one
						// request apart by ?variant=N.
						query := ""
						if i := strings.IndexByte(u, '?'); i >= 0 {
							query = u[i:]
						}
						obj["url"] = prefix + s.Wrap(id, workerKey) + suffix + query
						changed = true
					}
				}
			}
		}
	}
	if !changed {
		return body, false, nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		return nil, false, err
	}
	return buf.Bytes(), true, nil
}

func wrapField(obj map[string]any, field string, s jobid.Signer, key string) bool {
	id, ok := obj[field].(string)
	if !ok || id == "" {
		return false
	}
	if _, _, wrapped := s.Unwrap(id); wrapped {
		return false
	}
	obj[field] = s.Wrap(id, key)
	return true
}
