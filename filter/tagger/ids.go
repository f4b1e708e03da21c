package tagger

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/diffrouter/diffusion-router/jobid"
)

// WrapIDs makes the job ids in a worker's JSON answer carry the worker: the
// top-level "id", and in "data" each item's "id" and the id inside a
// "/v1/{images,videos}/{id}/content" url. version names the weight version
// to sign into each id ("" for none). It reports whether anything changed.
func WrapIDs(body []byte, s jobid.Signer, workerKey string, version func(id string) string) ([]byte, bool, error) {
	wrap := func(id string) (string, bool) {
		if _, _, wrapped := s.Unwrap(id); wrapped {
			return id, false
		}
		return s.WrapRef(jobid.Ref{ID: id, Worker: workerKey, Version: version(id)}), true
	}
	if out, changed, ok := wrapIDsScanned(body, wrap); ok {
		return out, changed, nil
	}
	return wrapIDsDecoded(body, wrap)
}

// wrapURL wraps the id inside a job's content url. The query stays: sglang
// tells the images of one request apart by ?variant=N.
func wrapURL(u string, wrap func(string) (string, bool)) (string, bool) {
	prefix, id, suffix, ok := jobPath(u)
	if !ok || suffix != "/content" {
		return u, false
	}
	w, did := wrap(id)
	if !did {
		return u, false
	}
	query := ""
	if i := strings.IndexByte(u, '?'); i >= 0 {
		query = u[i:]
	}
	return prefix + w + suffix + query, true
}

// wrapIDsDecoded is WrapIDs by decoding and encoding the whole answer.
func wrapIDsDecoded(body []byte, wrap func(string) (string, bool)) ([]byte, bool, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber() // keep numbers exactly as the worker wrote them
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		return nil, false, fmt.Errorf("response is not a JSON object: %w", err)
	}
	changed := wrapField(doc, "id", wrap)
	if items, ok := doc["data"].([]any); ok {
		for _, it := range items {
			obj, ok := it.(map[string]any)
			if !ok {
				continue
			}
			changed = wrapField(obj, "id", wrap) || changed
			if u, ok := obj["url"].(string); ok {
				if w, did := wrapURL(u, wrap); did {
					obj["url"], changed = w, true
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

func wrapField(obj map[string]any, field string, wrap func(string) (string, bool)) bool {
	id, ok := obj[field].(string)
	if !ok || id == "" {
		return false
	}
	w, did := wrap(id)
	if did {
		obj[field] = w
	}
	return did
}
