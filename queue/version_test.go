package queue

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// versionFleet: worker 1 holds version "0", worker 2 "1"; the fleet had
// "0" then "1".
func versionFleet(updating string) Fleet {
	f := fleet(0, 0)
	f.View.Workers[0].Version, f.View.Workers[1].Version = "0", "1"
	f.History, f.Updating = []string{"0", "1"}, updating
	return f
}

func versionReq(ticket, pin, min string) Request {
	r := req(ticket, 0, "t")
	r.Version, r.MinVersion = pin, min
	return r
}

// TestVersionRules: a pinned version goes only to a worker holding it; a
// minimum to one holding it or a later version; a version no worker holds
// waits while an update brings it and is refused (ErrVersion, naming the
// versions held) when none does.
func TestVersionRules(t *testing.T) {
	for _, tc := range []struct {
		name, pin, min, updating string
		want                     string // the worker granted, or "refused", or "waits"
	}{
		{"pinned old", "0", "", "", "10.0.0.1:80"},
		{"pinned new", "1", "", "", "10.0.0.2:80"},
		{"minimum old takes either", "", "0", "", "any"},
		{"minimum new", "", "1", "", "10.0.0.2:80"},
		{"pinned to no one", "9", "", "", "refused"},
		{"minimum no one had", "", "9", "", "refused"},
		{"pinned to the update's version", "2", "", "2", "waits"},
		{"minimum the update meets", "", "2", "2", "waits"},
		{"pinned elsewhere during an update", "9", "", "2", "refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := New(Options{})
			out := waitAll(t, q, versionReq("r", tc.pin, tc.min))
			f := versionFleet(tc.updating)
			if tc.updating != "" {
				f.History = append(f.History, tc.updating)
			}
			n := q.Dispatch(f)
			switch tc.want {
			case "waits":
				if n != 0 || q.Waiting() != 1 {
					t.Fatalf("granted %d, waiting %d; want it waiting for the update", n, q.Waiting())
				}
				// The update done: a worker holds it.
				f.View.Workers[1].Version = tc.updating
				f.Updating = ""
				if q.Dispatch(f) != 1 {
					t.Fatal("not granted once a worker holds the version")
				}
				if o := <-out; o.err != nil || o.grant.Worker != "10.0.0.2:80" {
					t.Fatalf("after the update: %+v", o)
				}
			case "refused":
				select {
				case o := <-out:
					if !errors.Is(o.err, ErrVersion) || !strings.Contains(o.err.Error(), `"0", "1"`) {
						t.Fatalf("refusal %v, want ErrVersion naming the versions held", o.err)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("not refused")
				}
			default:
				o := <-out
				if o.err != nil || tc.want != "any" && o.grant.Worker != tc.want {
					t.Fatalf("granted %+v, want %s", o, tc.want)
				}
			}
		})
	}
}
