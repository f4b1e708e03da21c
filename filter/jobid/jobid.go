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

func (s Signer) mac(id, key string) string {
	h := s.macs.Get().(hash.Hash)
	defer s.macs.Put(h)
	h.Reset()
	io.WriteString(h, id)
	h.Write([]byte{0})
	io.WriteString(h, key)
	var sum [sha256.Size]byte
	return base64.RawURLEncoding.EncodeToString(h.Sum(sum[:0])[:12])
}

// Wrap returns the id the client sees: the worker's id, the worker key and
// a MAC over both. It uses only URL-safe characters.
func (s Signer) Wrap(id, workerKey string) string {
	return id + sep + workerKey + sep + s.mac(id, workerKey)
}

// Unwrap checks a wrapped id and returns the worker's own id and the worker
// key. ok is false for anything the router did not issue.
func (s Signer) Unwrap(wrapped string) (id, workerKey string, ok bool) {
	i := strings.LastIndex(wrapped, sep)
	if i <= 0 {
		return "", "", false
	}
	rest, mac := wrapped[:i], wrapped[i+1:]
	j := strings.LastIndex(rest, sep)
	if j <= 0 {
		return "", "", false
	}
	id, workerKey = rest[:j], rest[j+1:]
	if len(workerKey) != 16 || !hmac.Equal([]byte(mac), []byte(s.mac(id, workerKey))) {
		return "", "", false
	}
	return id, workerKey, true
}
