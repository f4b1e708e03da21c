package queue

// Which workers a waiting request may take: rules narrow the view's
// workers, in the order listed below. A rule is a function in a file of
// its own; a new one is that file and its line in a list.
//   - serving rules say which workers could ever take the request; a
//     request none is left for is refused (ErrNoWorker) unless the fleet
//     is paused. Their result is cached per kind of request for one
//     dispatch, so a serving rule reads only the request's Pool and
//     Model.
//   - now rules say which of those can take it at this moment; a request
//     none is left for waits while later ones go on.
// Failing workers (the ejection rule) are left out by the pick itself
// (leastwork.Choose).

// A rule keeps the candidates (indices into the dispatch's view) that
// may take r. It may filter cands in place and return it.
type rule func(d *dispatch, r *Request, cands []int) []int

// servingRules run first; the first, kind, reads the whole view.
func servingRules() []rule { return []rule{kind, versions} }

// nowRules run on what the serving rules leave.
func nowRules() []rule { return []rule{openNow} }

// serving is the workers that could ever take r.
func (d *dispatch) serving(r *Request) []int {
	k := eligibleKey{r.Pool, r.Model, r.Version, r.MinVersion, fresh(r)}
	if c, ok := d.serves[k]; ok {
		return c
	}
	var c []int
	for _, keep := range d.servingRules {
		c = keep(d, r, c)
	}
	d.serves[k] = c
	return c
}

// takingNow is the workers of all (from serving) that can take r now. It
// returns scratch space, valid until the next call.
func (d *dispatch) takingNow(r *Request, all []int) []int {
	d.cands = append(d.cands[:0], all...)
	for _, keep := range d.nowRules {
		d.cands = keep(d, r, d.cands)
	}
	return d.cands
}

// servingKind is the workers of r's kind alone, whatever its version
// rules (to tell a request no worker of its kind serves from one whose
// version none holds).
func (d *dispatch) servingKind(r *Request) []int {
	plain := Request{Pool: r.Pool, Model: r.Model}
	return d.serving(&plain)
}
