package queue

import (
	"fmt"
	"slices"
	"strings"

	"github.com/diffrouter/diffusion-router/wire"
)

// versions is the serving rule of a request's weight-version rules (of
// the request as its group makes it: Queue.effective): a pinned version
// keeps the workers holding exactly it; a minimum keeps those holding it
// or a version the fleet had after it (Fleet.History); a group's request
// before its group has a version may take any worker but those whose
// version an update is about to take away (Queue.Closing).
func versions(d *dispatch, r *Request, cands []int) []int {
	if !versioned(r) && !(fresh(r) && len(d.closing) > 0) {
		return cands
	}
	out := cands[:0]
	for _, i := range cands {
		have := d.v.Workers[i].Version
		if fresh(r) && slices.Contains(d.closing, have) {
			continue // a new group does not start on weights on their way out
		}
		if r.Version != "" && have != r.Version {
			continue
		}
		if r.MinVersion != "" && !wire.AtLeast(d.f.History, have, r.MinVersion) {
			continue
		}
		out = append(out, i)
	}
	return out
}

func versioned(r *Request) bool { return r.Version != "" || r.MinVersion != "" }

// versionSoon reports whether an update under way brings a version r's
// rules accept: it waits for it rather than being refused.
func versionSoon(d *dispatch, r *Request) bool {
	u := d.f.Updating
	if u != "" && fresh(r) {
		return true // a new group starts on the update's version
	}
	if !versioned(r) || u == "" {
		return false
	}
	return (r.Version == "" || r.Version == u) && (r.MinVersion == "" || wire.AtLeast(d.f.History, u, r.MinVersion))
}

// versionRefusal is ErrVersion saying which versions the workers of r's
// kind hold (ofGroup: the version is r's group's).
func versionRefusal(d *dispatch, r *Request, ofGroup bool) error {
	var held []string
	for _, i := range d.servingKind(r) {
		if v := d.v.Workers[i].Version; !slices.Contains(held, v) {
			held = append(held, v)
		}
	}
	slices.Sort(held)
	want := "weight version " + fmt.Sprintf("%q", r.Version)
	if ofGroup {
		want = fmt.Sprintf("weight version %q, the version of group %q", r.Version, r.Group)
	}
	if r.Version == "" {
		want = "weight version " + fmt.Sprintf("%q", r.MinVersion) + " or later"
	}
	return fmt.Errorf("%w: no worker holds %s; the workers in rotation hold %s", ErrVersion, want, strings.Join(quoteAll(held), ", "))
}

func quoteAll(vs []string) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = fmt.Sprintf("%q", v)
	}
	return out
}
