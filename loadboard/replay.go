package loadboard

import (
	"errors"
	"fmt"

	"github.com/diffrouter/diffusion-router/wire"
)

// A signed report is worth something only to the Envoy that signed it, and
// only once: a copy sent again (within the clock skew the signature check
// allows) would otherwise repeat stale work and starve a worker. Each node's
// reports must come with strictly increasing signing times.

// ErrClaimRefused: a report's signing time is not one to accept.
var ErrClaimRefused = errors.New("signing time refused")

// Claim accepts signedAt (Unix ms) as node's newest report, or refuses a
// time not after the one last accepted from it. A refused claim changes
// nothing. Times older than twice the allowed skew are forgotten: the
// signature check refuses their reports anyway.
func (b *Board) Claim(node string, signedAt int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	horizon := now.Add(-2 * wire.SyncClockSkew).UnixMilli()
	for n, at := range b.signed {
		if at < horizon {
			delete(b.signed, n)
		}
	}
	if last, ok := b.signed[node]; ok && signedAt <= last {
		return fmt.Errorf("%w: report from %q signed at %d, not after its last accepted one (%d): a replayed or reordered report", ErrClaimRefused, node, signedAt, last)
	}
	if _, ok := b.signed[node]; !ok && len(b.signed) >= 4*MaxNodes {
		return fmt.Errorf("%w: more than %d Envoys signed reports within %v", ErrClaimRefused, 4*MaxNodes, 2*wire.SyncClockSkew)
	}
	b.signed[node] = signedAt
	return nil
}
