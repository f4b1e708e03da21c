package queue

import (
	"fmt"
	"slices"
	"time"
)

// Groups (GRPO-style: samples whose advantages are computed against each
// other): the first request of a group that is granted fixes the group's
// weight version, and the group's other requests go only to workers
// holding it, as if they pinned it. A group is forgotten once nothing of it
// waits and it had no grant for Options.GroupIdle, and the oldest idle
// ones go first past Options.MaxGroups.

// Defaults.
const (
	DefaultGroupIdle = 10 * time.Minute
	DefaultMaxGroups = 100000
)

type group struct {
	version string // "" until its first grant
	live    int    // requests waiting
	last    time.Time
}

// GroupStatus is one open group: the version its first grant fixed ("":
// none yet) and its requests waiting.
type GroupStatus struct {
	Version string `json:"version"`
	Waiting int    `json:"waiting"`
}

// effective is the request as the rules see it: a group's request pins the
// version its group was fixed to. q.mu is held.
func (q *Queue) effective(r *Request) *Request {
	if r.Group == "" {
		return r
	}
	g := q.groups[r.Group]
	if g == nil || g.version == "" || r.Version == g.version {
		return r
	}
	e := *r
	e.Version = g.version
	return &e
}

// enterGroup counts a request into its group; a request that pins a
// version other than its group's is refused. q.mu is held.
func (q *Queue) enterGroup(r *Request) error {
	if r.Group == "" {
		return nil
	}
	g := q.groups[r.Group]
	if g == nil {
		q.forgetGroups(true)
		g = &group{}
		q.groups[r.Group] = g
	}
	if r.Version != "" && g.version != "" && r.Version != g.version {
		return fmt.Errorf("%w: group %q is on weight version %q; the request pins %q", ErrVersion, r.Group, g.version, r.Version)
	}
	g.live++
	g.last = q.opts.Now()
	return nil
}

// leaveGroup counts a request out of its group; q.mu is held.
func (q *Queue) leaveGroup(r *Request) {
	if g := q.groups[r.Group]; g != nil {
		g.live--
		g.last = q.opts.Now()
	}
}

// fixGroup gives a group the version of the worker its first request was
// granted; q.mu is held.
func (q *Queue) fixGroup(name, version string) {
	if g := q.groups[name]; g != nil && g.version == "" {
		g.version = version
	}
}

// forgetGroups drops groups idle past GroupIdle (at most once a second
// unless full) and, when full, the longest idle. q.mu is held.
func (q *Queue) forgetGroups(adding bool) {
	now := q.opts.Now()
	full := adding && len(q.groups) >= q.opts.MaxGroups
	if !full && now.Sub(q.groupsForgotAt) < time.Second {
		return
	}
	q.groupsForgotAt = now
	var idle []string
	for name, g := range q.groups {
		if g.live > 0 {
			continue
		}
		if now.Sub(g.last) > q.opts.GroupIdle {
			delete(q.groups, name)
			continue
		}
		idle = append(idle, name)
	}
	if over := len(q.groups) - q.opts.MaxGroups + 1; full && over > 0 {
		slices.SortFunc(idle, func(a, b string) int { return q.groups[a].last.Compare(q.groups[b].last) })
		for _, name := range idle[:min(over, len(idle))] {
			delete(q.groups, name)
		}
	}
}

// Groups reports the open groups.
func (q *Queue) Groups() map[string]GroupStatus {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.forgetGroups(false)
	out := make(map[string]GroupStatus, len(q.groups))
	for name, g := range q.groups {
		out[name] = GroupStatus{Version: g.version, Waiting: g.live}
	}
	return out
}

// WaitingFor counts the requests waiting that only version will serve:
// pinned to it, or of a group fixed to it. A weight update does not take
// the last workers holding a version while some wait for it.
func (q *Queue) WaitingFor(version string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, w := range q.byKey {
		if q.effective(&w.Request).Version == version {
			n++
		}
	}
	return n
}

// Closing names the versions a weight update is about to take away (nil:
// none): a group that has no version yet is not started on them, so the
// requests waiting for them (WaitingFor) can only fall to zero.
func (q *Queue) Closing(versions []string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closing = slices.Clone(versions)
	q.Kick()
}

// fresh reports whether r is a group's request before its group has a
// version.
func fresh(r *Request) bool { return r.Group != "" && r.Version == "" }

// scan is how many waiting requests a grant looks through: scanLimit, or
// all while an update is about to take versions away, when the requests
// waiting for them must be found behind any number of new groups that
// wait for the update (else the update would wait for them in vain).
// q.mu is held.
func (q *Queue) scan() int {
	if len(q.closing) > 0 {
		return max(q.waiting, scanLimit)
	}
	return scanLimit
}
