package tagger

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"unicode/utf8"
)

// The answers the filter rewrites are small JSON documents in which a few
// string values change. Decoding them into maps and encoding them again is
// most of the filter's cost per rewritten answer inside Envoy's Wasm VM
// (garbage-collected Go, no SIMD), so the fast path finds those values with
// a scanner that allocates nothing but the list of places, and splices the
// new values into the original bytes (which also keeps the worker's field
// order and spacing). Anything unusual (escapes or invalid UTF-8 in a key or
// a value that may change) takes the decoding path, wrapIDsDecoded.

// idPlace is one string value that may change: its bytes (quotes
// excluded) and which field it is.
type idPlace struct {
	start, end int
	url        bool
}

var errEscaped = errors.New("an escape where an id may be")

// idScanner walks a document already known to be valid JSON.
type idScanner struct {
	b      []byte
	i      int
	places []idPlace
}

// Roles of a value: what it is in the answer's shape.
const (
	roleOther    = iota
	roleTop      // the answer itself
	roleData     // the top-level "data" array
	roleDataItem // an object in "data"
)

func (s *idScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

// str reads a string token at s.i and returns its contents' bounds and
// whether it holds an escape.
func (s *idScanner) str() (start, end int, escaped bool) {
	s.i++ // the opening quote
	start = s.i
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case '\\':
			escaped = true
			s.i += 2
			continue
		case '"':
			end = s.i
			s.i++
			return start, end, escaped
		}
		s.i++
	}
	return start, len(s.b), escaped
}

func (s *idScanner) value(role int) error {
	s.ws()
	if s.i >= len(s.b) {
		return nil
	}
	switch s.b[s.i] {
	case '{':
		return s.object(role)
	case '[':
		return s.array(role)
	case '"':
		s.str()
		return nil
	}
	// A number or a literal: up to the next delimiter.
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			return nil
		}
		s.i++
	}
	return nil
}

// next moves to the next element of an object or array, over white space
// and commas; it reports false at the closing byte (consumed) or the end.
func (s *idScanner) next(closing byte) bool {
	for {
		s.ws()
		if s.i >= len(s.b) || s.b[s.i] == closing {
			s.i++
			return false
		}
		if s.b[s.i] != ',' {
			return true
		}
		s.i++
	}
}

// member reads an object member's key and the colon after it, leaving s.i
// at the value.
func (s *idScanner) member() (key []byte, escaped bool) {
	ks, ke, kesc := s.str()
	s.ws()
	s.i++ // :
	s.ws()
	return s.b[ks:ke], kesc
}

// objectStart gives where a valid JSON object document starts, or false.
func objectStart(body []byte) (int, bool) {
	start := bytes.IndexFunc(body, func(r rune) bool { return r != ' ' && r != '\t' && r != '\r' && r != '\n' })
	if start < 0 || body[start] != '{' || !json.Valid(body) {
		return 0, false
	}
	return start, true
}

func (s *idScanner) object(role int) error {
	s.i++ // {
	for s.next('}') {
		key, kesc := s.member()
		watched := (role == roleTop || role == roleDataItem) && string(key) == "id" ||
			role == roleDataItem && string(key) == "url"
		if kesc && (role == roleTop || role == roleDataItem) {
			return errEscaped // an escaped key could spell "id"
		}
		switch {
		case watched && s.i < len(s.b) && s.b[s.i] == '"':
			vs, ve, vesc := s.str()
			if vesc || !utf8.Valid(s.b[vs:ve]) {
				return errEscaped // encoding/json would read it otherwise
			}
			s.places = append(s.places, idPlace{start: vs, end: ve, url: string(key) == "url"})
		case role == roleTop && string(key) == "data":
			if err := s.value(roleData); err != nil {
				return err
			}
		default:
			if err := s.value(roleOther); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *idScanner) array(role int) error {
	s.i++ // [
	child := roleOther
	if role == roleData {
		child = roleDataItem
	}
	for s.next(']') {
		if err := s.value(child); err != nil {
			return err
		}
	}
	return nil
}

// wrapIDsScanned is WrapIDs' fast path; ok is false when the document needs
// the decoding path.
func wrapIDsScanned(body []byte, wrap func(id string) (string, bool)) (out []byte, changed, ok bool) {
	start, ok := objectStart(body)
	if !ok {
		return nil, false, false
	}
	s := idScanner{b: body, i: start}
	if err := s.object(roleTop); err != nil {
		return nil, false, false
	}
	var buf []byte
	last := 0
	for _, p := range s.places {
		raw := string(body[p.start:p.end])
		var repl string
		var did bool
		if p.url {
			repl, did = wrapURL(raw, wrap)
		} else if raw != "" {
			repl, did = wrap(raw)
		}
		if !did {
			continue
		}
		if buf == nil {
			buf = make([]byte, 0, len(body)+len(s.places)*64)
		}
		buf = append(append(buf, body[last:p.start]...), repl...)
		last = p.end
	}
	if buf == nil {
		return body, false, true
	}
	return append(buf, body[last:]...), true, true
}

// scanRequest is ParseBody's fast path: it reads the top-level fields of a
// generation body without decoding the rest (the prompt, often the largest
// part). ok is false where encoding/json might read the body differently:
// not an object, invalid JSON, a key that is ours only when case is
// folded, a field of ours with an escape or of an unexpected type.
func scanRequest(body []byte) (req generationRequest, ok bool) {
	start, ok := objectStart(body)
	if !ok {
		return req, false
	}
	s := idScanner{b: body, i: start + 1}
	for s.next('}') {
		rawKey, kesc := s.member()
		key := string(rawKey)
		str, num := req.field(key)
		isStr, isNum := str != nil, num != nil
		if !isStr && !isNum {
			if kesc || foldsToField(key) {
				return req, false // encoding/json would match it to one of ours
			}
			if s.value(roleOther) != nil {
				return req, false
			}
			continue
		}
		if kesc {
			return req, false
		}
		vstart := s.i
		switch c := body[s.i]; {
		case c == 'n' && bytes.HasPrefix(body[s.i:], []byte("null")):
			s.i += 4 // null leaves the field as it was, as with encoding/json
		case c == '"' && isStr:
			vs, ve, vesc := s.str()
			if vesc || !utf8.Valid(body[vs:ve]) {
				return req, false // encoding/json would read it otherwise
			}
			*str = string(body[vs:ve])
		case (c == '-' || (c >= '0' && c <= '9')) && isNum:
			_ = s.value(roleOther)
			*num = json.Number(body[vstart:s.i])
		default:
			return req, false
		}
	}
	return req, true
}

// field is where the value of a key of ours goes.
func (req *generationRequest) field(key string) (*string, *json.Number) {
	switch key {
	case "model":
		return &req.Model, nil
	case "response_format":
		return &req.Format, nil
	case "size":
		return &req.Size, nil
	case "n":
		return nil, &req.N
	case "num_inference_steps":
		return nil, &req.Steps
	case "width":
		return nil, &req.Width
	case "height":
		return nil, &req.Height
	case "num_frames":
		return nil, &req.Frames
	case "user":
		return &req.User, nil
	}
	return nil, nil
}

// foldsToField reports whether a key other than ours names one of ours
// once case is folded (encoding/json matches field names that way).
func foldsToField(key string) bool {
	for _, f := range []string{"model", "response_format", "size", "n", "num_inference_steps", "width", "height", "num_frames", "user"} {
		if strings.EqualFold(key, f) {
			return true
		}
	}
	for i := 0; i < len(key); i++ {
		if key[i] >= 0x80 {
			return true // a non-ASCII key could fold to ours (K as the Kelvin sign)
		}
	}
	return false
}
