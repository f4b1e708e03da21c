package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Filter syncs are signed with the job-id secret, which every Envoy's
// filter and the control plane already hold: a report steers load and
// ends other Envoys' video jobs, so only the router's own Envoys may post
// one.
const (
	// HeaderSyncTime carries when the report was signed (Unix ms);
	// HeaderSyncSignature its signature (SyncSignature).
	HeaderSyncTime      = "x-diffusion-sync-time"
	HeaderSyncSignature = "x-diffusion-sync-signature"
	// SyncClockSkew bounds how far a report's signing time may be from
	// the control plane's clock, which bounds how long a copied report
	// can be replayed.
	SyncClockSkew = time.Minute
)

// syncLabel keeps sync signatures apart from job-id MACs, made with the
// same secret.
const syncLabel = "diffusion-router filter-sync\n"

// SyncSignature is the signature of a report body signed at unixMs: hex
// HMAC-SHA256 under the secret of a label, the time and the body.
func SyncSignature(secret []byte, unixMs int64, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(syncLabel))
	m.Write(strconv.AppendInt(nil, unixMs, 10))
	m.Write([]byte{'\n'})
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// CheckSyncSignature verifies a report's time and signature headers.
func CheckSyncSignature(secret []byte, signedAt, signature string, body []byte, now time.Time) error {
	if signedAt == "" || signature == "" {
		return fmt.Errorf("unsigned: a filter sync needs %s and %s", HeaderSyncTime, HeaderSyncSignature)
	}
	ms, err := strconv.ParseInt(signedAt, 10, 64)
	if err != nil {
		return fmt.Errorf("%s must be the signing time in Unix milliseconds", HeaderSyncTime)
	}
	if d := now.Sub(time.UnixMilli(ms)); d > SyncClockSkew || d < -SyncClockSkew {
		return fmt.Errorf("report signed %v away from this control plane's clock (at most %v): are the clocks in sync?", d.Round(time.Millisecond), SyncClockSkew)
	}
	if !hmac.Equal([]byte(signature), []byte(SyncSignature(secret, ms, body))) {
		return errors.New("bad signature: the filter's job-id secret is not this control plane's")
	}
	return nil
}
