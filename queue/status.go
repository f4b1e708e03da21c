package queue

import (
	"slices"
	"strings"
	"time"
)

// Status is the queue as GET /queue shows it.
type Status struct {
	Waiting           int            `json:"waiting"`
	OldestWaitSeconds float64        `json:"oldest_wait_seconds"`
	Priorities        []BandStatus   `json:"priorities"`
	Tenants           []TenantStatus `json:"tenants"`
	// UnreportedGrants are grants no Envoy report counts yet.
	UnreportedGrants int    `json:"unreported_grants"`
	Granted          uint64 `json:"granted"`
	Refused          uint64 `json:"refused"`
	Cancelled        uint64 `json:"cancelled"`
	TimedOut         uint64 `json:"timed_out"`
	// RuleGranted and RuleRefused: requests with weight-version rules
	// granted, and refused for their rules (409; in Refused too).
	RuleGranted uint64 `json:"rule_granted"`
	RuleRefused uint64 `json:"rule_refused"`
}

// BandStatus is one priority's waiting requests by tenant.
type BandStatus struct {
	Priority int            `json:"priority"`
	Waiting  int            `json:"waiting"`
	Tenants  map[string]int `json:"tenants"`
}

// TenantStatus is one tenant: what waits, and the GPU time (cost
// estimate) it was served and its share of all served.
type TenantStatus struct {
	Tenant     string  `json:"tenant"`
	Weight     float64 `json:"weight"`
	Waiting    int     `json:"waiting"`
	ServedCost float64 `json:"served_cost"`
	Share      float64 `json:"share"`
}

// Status reports the queue.
func (q *Queue) Status() Status {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.forgetIdle()
	now := q.opts.Now()
	s := Status{Waiting: q.waiting, Priorities: []BandStatus{}, Tenants: []TenantStatus{}, UnreportedGrants: len(q.grants),
		Granted: q.stats.Granted, Refused: q.stats.Refused, Cancelled: q.stats.Cancelled, TimedOut: q.stats.TimedOut,
		RuleGranted: q.stats.RuleGranted, RuleRefused: q.stats.RuleRefused}
	var oldest time.Time
	for _, b := range q.bands {
		bs := BandStatus{Priority: b.priority, Tenants: map[string]int{}}
		for name, t := range b.tenants {
			bs.Tenants[name] = t.live
			bs.Waiting += t.live
			if w, _ := t.next(0); w != nil && (oldest.IsZero() || w.at.Before(oldest)) {
				oldest = w.at
			}
		}
		s.Priorities = append(s.Priorities, bs)
	}
	if !oldest.IsZero() {
		s.OldestWaitSeconds = now.Sub(oldest).Seconds()
	}
	s.Tenants = q.fair.status(q.perTen)
	slices.SortFunc(s.Tenants, func(a, b TenantStatus) int { return strings.Compare(a.Tenant, b.Tenant) })
	return s
}
