package queue

import "time"

// shares is the fairness between tenants the queue runs today: each
// tenant is served GPU time (its granted requests' cost estimates) in
// proportion to its weight, by start-time fair queueing. A tenant's key
// is the cost it was served over its weight; one that comes back after a
// while brings no credit from its idle time.
type shares struct {
	// weights are tenants' shares (default 1).
	weights map[string]float64
	// most bounds the tenants remembered (those with requests waiting
	// always are).
	most int
	// served is each tenant's granted cost over its weight, across bands.
	served map[string]float64
	// seen is each remembered tenant's last grant.
	seen map[string]time.Time
}

func newShares(weights map[string]float64, most int) *shares {
	return &shares{weights: weights, most: most, served: map[string]float64{}, seen: map[string]time.Time{}}
}

func (s *shares) weight(tenant string) float64 {
	if w, ok := s.weights[tenant]; ok && w > 0 {
		return w
	}
	return 1
}

// forget drops the record of tenants with nothing waiting not granted
// since idleSince: one that comes back starts level with the others, as
// it would anyway after an idle time.
func (s *shares) forget(idleSince time.Time, waiting func(tenant string) bool) {
	for name, at := range s.seen {
		if at.Before(idleSince) && !waiting(name) {
			delete(s.served, name)
			delete(s.seen, name)
		}
	}
}

// enter: a tenant that comes back starts level with the least served
// tenant waiting.
func (s *shares) enter(tenant string, least float64) float64 {
	return max(s.served[tenant], least)
}

func (s *shares) step(r *Request) float64 {
	return float64(max(r.Cost, 1)) / s.weight(r.Tenant)
}

func (s *shares) granted(r *Request, at time.Time, waiting func(tenant string) bool) {
	s.served[r.Tenant] += s.step(r)
	s.seen[r.Tenant] = at
	if len(s.served) <= s.most {
		return
	}
	// Over the bound: forget tenants with nothing waiting.
	for name := range s.served {
		if len(s.served) <= s.most {
			break
		}
		if !waiting(name) {
			delete(s.served, name)
			delete(s.seen, name)
		}
	}
}

func (s *shares) status(waiting map[string]int) []TenantStatus {
	names := map[string]bool{}
	for n := range s.served {
		names[n] = true
	}
	for n := range waiting {
		names[n] = true
	}
	out := make([]TenantStatus, 0, len(names))
	total := 0.0
	for n := range names {
		cost := s.served[n] * s.weight(n)
		total += cost
		out = append(out, TenantStatus{Tenant: n, Weight: s.weight(n), Waiting: waiting[n], ServedCost: cost})
	}
	for i := range out {
		if total > 0 {
			out[i].Share = out[i].ServedCost / total
		}
	}
	return out
}
