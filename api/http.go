package api

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/diffrouter/diffusion-router/fleet"
	"github.com/diffrouter/diffusion-router/registry"
)

// apiError is an error with the status it answers.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func errorf(status int, format string, a ...any) *apiError {
	return &apiError{status: status, msg: fmt.Sprintf(format, a...)}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		writeJSON(w, ae.status, ErrorAnswer{Error: ae.msg})
	case errors.Is(err, registry.ErrStore):
		// Nothing changed: the router does not answer what it cannot keep.
		writeJSON(w, http.StatusServiceUnavailable, ErrorAnswer{Error: err.Error()})
	case errors.Is(err, registry.ErrInvalidURL):
		writeJSON(w, http.StatusBadRequest, ErrorAnswer{Error: err.Error()})
	case errors.Is(err, registry.ErrNotFound):
		writeJSON(w, http.StatusNotFound, ErrorAnswer{Error: err.Error()})
	case errors.Is(err, fleet.ErrCatchUp):
		writeJSON(w, http.StatusBadGateway, ErrorAnswer{Error: err.Error()})
	case errors.Is(err, fleet.ErrUnreachable), errors.Is(err, fleet.ErrRejected), errors.Is(err, registry.ErrConflict):
		writeJSON(w, http.StatusConflict, ErrorAnswer{Error: err.Error()})
	default:
		writeJSON(w, http.StatusInternalServerError, ErrorAnswer{Error: err.Error()})
	}
}

// authorized checks the bearer token in constant time.
func (s *Server) authorized(r *http.Request) bool {
	// The scheme is case-insensitive (RFC 7235); the token is not.
	scheme, got, ok := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
	return ok && strings.EqualFold(scheme, "Bearer") &&
		subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(s.AdminToken)) == 1
}

func (s *Server) methods(w http.ResponseWriter, r *http.Request, byMethod map[string]http.HandlerFunc) {
	h, ok := byMethod[r.Method]
	if !ok && r.Method == http.MethodHead {
		h, ok = byMethod[http.MethodGet]
	}
	if !ok {
		allowed := make([]string, 0, len(byMethod))
		for m := range byMethod {
			allowed = append(allowed, m)
		}
		slices.Sort(allowed)
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		writeJSON(w, http.StatusMethodNotAllowed, ErrorAnswer{Error: fmt.Sprintf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allowed, ", "))})
		return
	}
	h(w, r)
}

// requireJSON refuses a body not declared as JSON (415): a client that
// sends another type is not speaking this API.
func requireJSON(r *http.Request) error {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return errorf(http.StatusUnsupportedMediaType, "Content-Type must be application/json, not %q", r.Header.Get("Content-Type"))
	}
	return nil
}

// readBody reads the (size-limited) body.
func readBody(r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errorf(http.StatusRequestEntityTooLarge, "request body larger than %d bytes", MaxBodyBytes)
		}
		return nil, errorf(http.StatusBadRequest, "reading request body: %v", err)
	}
	return b, nil
}

// decodeObject parses a JSON object body; an empty body is an empty object.
func decodeObject(body []byte) (map[string]any, error) {
	if len(strings.TrimSpace(string(body))) == 0 {
		return map[string]any{}, nil
	}
	// Go's decoder would turn invalid UTF-8 into U+FFFD, and the workers and
	// the store would get a string the client never sent.
	if !utf8.Valid(body) {
		return nil, errorf(http.StatusBadRequest, "invalid JSON body: not valid UTF-8")
	}
	var v any
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, errorf(http.StatusBadRequest, "invalid JSON body: %v", err)
	}
	if dec.More() {
		return nil, errorf(http.StatusBadRequest, "invalid JSON body: trailing data after the object")
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, errorf(http.StatusBadRequest, "request body must be a JSON object")
	}
	return obj, nil
}

// readObject reads and parses a JSON object body.
func readObject(r *http.Request) ([]byte, map[string]any, error) {
	body, err := readBody(r)
	if err != nil {
		return nil, nil, err
	}
	obj, err := decodeObject(body)
	return body, obj, err
}
