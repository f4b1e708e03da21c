// Package jobid carries a worker's identity inside the job ids clients see,
// so that polls of a video job reach the worker that holds it from any Envoy
// replica, also after a restart, without an affinity table. The identity is
// authenticated: a client cannot forge an id that steers a request to a
// worker of its choosing. Pure functions, shared by the control plane (which
// labels endpoints with WorkerKey) and the Wasm filter (which wraps ids).
package jobid

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"hash"
	"io"
	"strings"
	"sync"
)

// WorkerKey is the short, stable label of a worker: it names the worker in
// Envoy's endpoint metadata and inside wrapped job ids.
func WorkerKey(canonicalURL string) string {
	sum := sha256.Sum256([]byte(canonicalURL))
	return hex.EncodeToString(sum[:8])
}

// Signer wraps and unwraps job ids with a shared secret. It is safe for
// concurrent use.
type Signer struct {
	// macs holds keyed HMAC states: a reset one starts from the secret
	// without hashing it again, and nothing is allocated per id.
	macs *sync.Pool
}

// NewSigner returns a signer for the secret (every Envoy replica of one
// router must get the same secret).
func NewSigner(secret []byte) Signer {
	key := append([]byte(nil), secret...)
	return Signer{macs: &sync.Pool{New: func() any { return hmac.New(sha256.New, key) }}}
}

const sep = "."

// versionSep joins the worker key and the encoded weight version inside
// one segment; base64url never yields a dot, so the segments stay apart.
const versionSep = "-"

// keyLen is the length of a WorkerKey.
const keyLen = 16

// mac authenticates id, key and version. A versioned id's MAC starts from
// a byte of its own, so it can never pass for a versionless one.
func (s Signer) mac(id, key, version string) string {
	h := s.macs.Get().(hash.Hash)
	defer s.macs.Put(h)
	h.Reset()
	if version != "" {
		h.Write([]byte{1})
	}
	io.WriteString(h, id)
	h.Write([]byte{0})
	io.WriteString(h, key)
	if version != "" {
		h.Write([]byte{0})
		io.WriteString(h, version)
	}
	var sum [sha256.Size]byte
	return base64.RawURLEncoding.EncodeToString(h.Sum(sum[:0])[:12])
}

// Ref is what a wrapped id carries: the worker's own id, the worker that
// holds the job and, when known, the weight version that made it.
type Ref struct {
	ID, Worker, Version string
}

// Wrap returns the id the client sees: the worker's id, the worker key and
// a MAC over both. It uses only URL-safe characters.
func (s Signer) Wrap(id, workerKey string) string {
	return s.WrapRef(Ref{ID: id, Worker: workerKey})
}

// WrapRef is Wrap carrying the weight version too (when not empty): a job
// made under one version keeps naming it after its worker moved on.
func (s Signer) WrapRef(r Ref) string {
	seg := r.Worker
	if r.Version != "" {
		seg += versionSep + base64.RawURLEncoding.EncodeToString([]byte(r.Version))
	}
	return r.ID + sep + seg + sep + s.mac(r.ID, r.Worker, r.Version)
}

// Unwrap checks a wrapped id and returns the worker's own id and the worker
// key. ok is false for anything the router did not issue.
func (s Signer) Unwrap(wrapped string) (id, workerKey string, ok bool) {
	r, ok := s.UnwrapRef(wrapped)
	return r.ID, r.Worker, ok
}

// UnwrapRef is Unwrap with the weight version ("" for ids issued without
// one).
func (s Signer) UnwrapRef(wrapped string) (Ref, bool) {
	i := strings.LastIndex(wrapped, sep)
	if i <= 0 {
		return Ref{}, false
	}
	rest, mac := wrapped[:i], wrapped[i+1:]
	j := strings.LastIndex(rest, sep)
	if j <= 0 {
		return Ref{}, false
	}
	r := Ref{ID: rest[:j]}
	seg := rest[j+1:]
	switch {
	case len(seg) == keyLen:
		r.Worker = seg
	case len(seg) > keyLen+len(versionSep) && seg[keyLen:keyLen+len(versionSep)] == versionSep:
		v, err := base64.RawURLEncoding.DecodeString(seg[keyLen+len(versionSep):])
		if err != nil || len(v) == 0 {
			return Ref{}, false
		}
		r.Worker, r.Version = seg[:keyLen], string(v)
	default:
		return Ref{}, false
	}
	if !hmac.Equal([]byte(mac), []byte(s.mac(r.ID, r.Worker, r.Version))) {
		return Ref{}, false
	}
	return r, true
}
