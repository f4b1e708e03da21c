package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/diffrouter/diffusion-router/fleet"
	"github.com/diffrouter/diffusion-router/jobbook"
	"github.com/diffrouter/diffusion-router/loadboard"
	"github.com/diffrouter/diffusion-router/queue"
	"github.com/diffrouter/diffusion-router/wire"
)

// filterAPI answers the Envoy filters' calls: their syncs (load reports
// for the fleet's view), the router-owned queue (wait for a turn, cancel)
// and the job book (record a video job's version, look versions up).
// None takes the admin token (the filters hold none): each is signed with
// the job-id secret, carries ids signed with it, or tells no secret.
type filterAPI struct {
	fleet           *fleet.Manager
	Board           *loadboard.Board
	Queue           *queue.Queue
	Jobs            *jobbook.Book
	SyncSecret      []byte
	DefaultSlots    int
	HoldWhileAsleep bool
}

// filters is the part of the server that answers the filters.
func (s *Server) filters() *filterAPI {
	return &filterAPI{fleet: s.Fleet, Board: s.Board, Queue: s.Queue, Jobs: s.Jobs, SyncSecret: s.SyncSecret,
		DefaultSlots: s.DefaultSlots, HoldWhileAsleep: s.HoldWhileAsleep}
}

// handler is the filters' endpoint at path (each a POST), nil for other
// paths.
func (f *filterAPI) handler(path string) http.HandlerFunc {
	switch path {
	case wire.PathFilterSync:
		return f.filterSync
	case wire.PathJobRecord:
		return f.recordJobs
	case wire.PathJobVersions:
		return f.jobVersions
	case wire.PathQueue:
		return f.queueWait
	case wire.PathQueueCancel:
		return f.queueCancel
	case wire.PathStalled:
		return f.stalled
	}
	return nil
}

// readSigned reads a filter's body signed with the job-id secret (as
// syncs are) into the wire type v.
func (f *filterAPI) readSigned(r *http.Request, what string, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return errorf(http.StatusRequestEntityTooLarge, "body too large or unreadable: %v", err)
	}
	if len(f.SyncSecret) == 0 {
		return errorf(http.StatusInternalServerError, "%s has no secret to check signatures with", what)
	}
	if err := wire.CheckSyncSignature(f.SyncSecret, r.Header.Get(wire.HeaderSyncTime), r.Header.Get(wire.HeaderSyncSignature), body, time.Now()); err != nil {
		return errorf(http.StatusUnauthorized, "%s: %v", what, err)
	}
	if err := requireJSON(r); err != nil {
		return err
	}
	if err := decodeStrictBody(body, v); err != nil {
		return errorf(http.StatusBadRequest, "%s: invalid JSON body: %v", what, err)
	}
	return nil
}

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
