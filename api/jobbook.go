package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/diffrouter/diffusion-router/jobid"
	"github.com/diffrouter/diffusion-router/wire"
)

// decodeStrict reads a JSON body into the wire type v (decodeStrictBody).
func decodeStrict(r *http.Request, v any) error {
	if err := requireJSON(r); err != nil {
		return err
	}
	body, err := readBody(r)
	if err != nil {
		return err
	}
	if err := decodeStrictBody(body, v); err != nil {
		return errorf(http.StatusBadRequest, "invalid JSON body: %v", err)
	}
	return nil
}

// decodeStrictBody decodes one JSON object into the wire type v, refusing
// unknown fields and trailing data.
func decodeStrictBody(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("one JSON object expected")
	}
	return nil
}

// recordJobs takes new jobs' signed ids from a filter. Every id must be
// one this router signed with a version, or nothing is recorded.
func (s *Server) recordJobs(w http.ResponseWriter, r *http.Request) {
	if s.Jobs == nil || len(s.SyncSecret) == 0 {
		writeError(w, errorf(http.StatusNotFound, "no job book: the router runs without its filter"))
		return
	}
	var rec wire.JobRecord
	if err := decodeStrict(r, &rec); err != nil {
		writeError(w, err)
		return
	}
	if len(rec.IDs) == 0 || len(rec.IDs) > wire.MaxJobsPerCall {
		writeError(w, errorf(http.StatusBadRequest, "\"ids\" must hold 1 to %d job ids", wire.MaxJobsPerCall))
		return
	}
	signer := jobid.NewSigner(s.SyncSecret)
	refs := make([]jobid.Ref, 0, len(rec.IDs))
	for _, id := range rec.IDs {
		ref, ok := signer.UnwrapRef(id)
		if !ok || ref.Version == "" {
			writeError(w, errorf(http.StatusBadRequest, "job id %q was not issued by this router with a weight version", id))
			return
		}
		refs = append(refs, ref)
	}
	for _, ref := range refs {
		s.Jobs.Record(ref.Worker, ref.ID, ref.Version)
	}
	writeJSON(w, http.StatusOK, map[string]any{"recorded": len(refs)})
}

// jobVersions answers the versions of one worker's jobs.
func (s *Server) jobVersions(w http.ResponseWriter, r *http.Request) {
	if s.Jobs == nil {
		writeError(w, errorf(http.StatusNotFound, "no job book: the router runs without its filter"))
		return
	}
	var q wire.JobVersionsQuery
	if err := decodeStrict(r, &q); err != nil {
		writeError(w, err)
		return
	}
	if len(q.Worker) != 16 || len(q.IDs) > wire.MaxJobsPerCall {
		writeError(w, errorf(http.StatusBadRequest, "\"worker\" must be a worker key (16 characters) and \"ids\" hold at most %d job ids", wire.MaxJobsPerCall))
		return
	}
	writeJSON(w, http.StatusOK, wire.JobVersions{Versions: s.Jobs.Versions(q.Worker, q.IDs)})
}
