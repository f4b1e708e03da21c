package api

import (
	"net/http"

	"github.com/diffrouter/diffusion-router/jobid"
	"github.com/diffrouter/diffusion-router/wire"
)

// recordJobs takes new jobs' signed ids from a filter. Every id must be
// one this router signed with a version, or nothing is recorded.
func (f *filterAPI) recordJobs(w http.ResponseWriter, r *http.Request) {
	if f.Jobs == nil || len(f.SyncSecret) == 0 {
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
	signer := jobid.NewSigner(f.SyncSecret)
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
		f.Jobs.Record(ref.Worker, ref.ID, ref.Version)
	}
	writeJSON(w, http.StatusOK, map[string]any{"recorded": len(refs)})
}

// jobVersions answers the versions of one worker's jobs.
func (f *filterAPI) jobVersions(w http.ResponseWriter, r *http.Request) {
	if f.Jobs == nil {
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
	writeJSON(w, http.StatusOK, wire.JobVersions{Versions: f.Jobs.Versions(q.Worker, q.IDs)})
}
