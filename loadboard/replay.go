package loadboard

import (
	"errors"
	"fmt"
	"slices"

	"github.com/diffrouter/diffusion-router/wire"
)

// A signed report is worth something only to the Envoy that signed it, and
// only once: a copy sent again (within the clock skew the signature check
// allows) would otherwise repeat stale work and starve a worker. So each
// signing time counts once. A node's threads report concurrently, so its
// reports may arrive out of order: one older than the newest accepted but
// never seen (within lateWindow and the last lateKept times) is accepted
// as late: what it adds (completions, ended jobs, freed slots) counts,
// but it does not replace the newer load the node reported.

// ErrClaimRefused: a report's signing time is not one to accept.
var ErrClaimRefused = errors.New("signing time refused")

const (
	// lateWindow bounds how far behind a node's newest report a late
	// one may be (ms): a sync's round trip, with room.
	lateWindow = 2000
	// lateKept is how many of a node's latest signing times are
	// remembered, to refuse a copy of a late one.
	lateKept = 64
)

// Claim accepts signedAt (Unix ms) as node's newest report, or as a late
// one (late: older than the newest, never seen), or refuses a time seen
// before or too old to tell. A refused claim changes nothing. Times older
// than twice the allowed skew are forgotten: the signature check refuses
// their reports anyway.
func (b *Board) Claim(node string, signedAt int64) (late bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	horizon := now.Add(-2 * wire.SyncClockSkew).UnixMilli()
	for n, at := range b.signed {
		if at < horizon {
			delete(b.signed, n)
			delete(b.recent, n)
		}
	}
	last, ok := b.signed[node]
	if !ok && len(b.signed) >= 4*MaxNodes {
		return false, fmt.Errorf("%w: more than %d Envoys signed reports within %v", ErrClaimRefused, 4*MaxNodes, 2*wire.SyncClockSkew)
	}
	recent := b.recent[node]
	if ok && signedAt <= last {
		switch {
		case slices.Contains(recent, signedAt):
			return false, fmt.Errorf("%w: report from %q signed at %d was accepted before: a replayed report", ErrClaimRefused, node, signedAt)
		case signedAt < last-lateWindow || len(recent) >= lateKept && signedAt < slices.Min(recent):
			return false, fmt.Errorf("%w: report from %q signed at %d, too far behind its newest (%d) to tell a late one from a replay", ErrClaimRefused, node, signedAt, last)
		}
		late = true
	} else {
		b.signed[node] = signedAt
	}
	if len(recent) >= lateKept {
		recent = slices.Delete(recent, 0, 1)
	}
	b.recent[node] = append(recent, signedAt)
	return late, nil
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
	failing := map[string]bool{}
	overdue := map[string]*wire.Overdue{}
	for _, h := range e.report.Hosts {
		failing[h.Addr], overdue[h.Addr] = h.Failing, h.Overdue
	}
	for _, h := range hosts {
		given[h.Addr] = true
		// A part says what is counted; whether the worker is failing or
		// overdue the node's reports say.
		h.Failing = h.Failing || failing[h.Addr]
		if h.Overdue == nil {
			h.Overdue = overdue[h.Addr]
		}
		if h.Work > 0 || h.Requests > 0 || h.Failing {
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
