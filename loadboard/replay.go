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

// Note merges part of a node's load, signed at signedAt, into its report:
// the hosts given replace what the report said of them (a host with
// nothing counted leaves it). It is how a filter that asks the queue for
// a turn says what it counts right now on the workers it weighed. A part
// signed before the node's newest accepted report changes nothing.
func (b *Board) Note(node string, hosts []wire.HostReport, signedAt int64) error {
	if err := Check(wire.LoadReport{Node: node, Hosts: hosts}); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if last, ok := b.signed[node]; ok && signedAt < last {
		return nil
	}
	e, ok := b.reports[node]
	if !ok {
		if len(b.reports) >= MaxNodes {
			return fmt.Errorf("more than %d Envoys report load", MaxNodes)
		}
		e = entry{at: b.now(), report: wire.LoadReport{Node: node}}
	}
	merged := make([]wire.HostReport, 0, len(e.report.Hosts)+len(hosts))
	given := make(map[string]bool, len(hosts))
	for _, h := range hosts {
		given[h.Addr] = true
		if h.Work > 0 || h.Requests > 0 {
			merged = append(merged, h)
		}
	}
	for _, h := range e.report.Hosts {
		if !given[h.Addr] {
			merged = append(merged, h)
		}
	}
	e.report.Hosts = merged
	b.reports[node] = e
	return nil
}
