package queue

import (
	"context"
	"errors"
	"fmt"
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

// TestGroupsStayOnOneVersion: a group's first grant fixes its version; its
// other requests go only to workers holding it, wait for one while it is
// busy (counted by WaitingFor), and are refused, naming the group, once no
// worker holds it and no update brings it.
func TestGroupsStayOnOneVersion(t *testing.T) {
	q := New(Options{})
	grp := func(ticket string) Request { r := req(ticket, 0, "t"); r.Group = "g1"; return r }
	out := waitAll(t, q, grp("a"))
	f := versionFleet("")
	f.View.Workers[0].RemoteRequests = 1 // the "0" worker busy: a goes to "1"
	if q.Dispatch(f) != 1 {
		t.Fatal("the group's first request was not granted")
	}
	if o := <-out; o.err != nil || o.grant.Worker != "10.0.0.2:80" {
		t.Fatalf("first: %+v", o)
	}
	if g := q.Groups()["g1"]; g.Version != "1" {
		t.Fatalf("group after its first grant: %+v", g)
	}
	// "1" busy now, "0" free: the group's next request waits for "1".
	out = waitAll(t, q, grp("b"))
	f = versionFleet("")
	f.View.Workers[1].RemoteRequests = 1
	if n := q.Dispatch(f); n != 0 || q.WaitingFor("1") != 1 {
		t.Fatalf("granted %d (waiting for version 1: %d); want it waiting for its group's version", n, q.WaitingFor("1"))
	}
	if q.Dispatch(versionFleet("")) != 1 {
		t.Fatal("not granted once its version's worker is free")
	}
	if o := <-out; o.err != nil || o.grant.Worker != "10.0.0.2:80" {
		t.Fatalf("second: %+v", o)
	}
	// A request of the group pinning another version is refused at once.
	if _, err := q.Wait(context.Background(), func() Request { r := grp("c"); r.Version = "0"; return r }()); !errors.Is(err, ErrVersion) {
		t.Fatalf("a group request pinning another version: %v", err)
	}
	// Its version gone for good: refused, naming the group.
	out = waitAll(t, q, grp("d"))
	f = versionFleet("")
	f.View.Workers[1].Version = "2"
	f.History = append(f.History, "2")
	q.Dispatch(f)
	if o := <-out; !errors.Is(o.err, ErrVersion) || !strings.Contains(o.err.Error(), `group "g1"`) {
		t.Fatalf("a group whose version is gone: %v", o.err)
	}
}

// TestGroupsForgotten: an idle group is forgotten after GroupIdle.
func TestGroupsForgotten(t *testing.T) {
	now := time.Unix(1000, 0)
	q := New(Options{GroupIdle: time.Minute, Now: func() time.Time { return now }})
	r := req("a", 0, "t")
	r.Group = "g"
	out := waitAll(t, q, r)
	q.Dispatch(versionFleet(""))
	<-out
	if len(q.Groups()) != 1 {
		t.Fatal("the group was not kept")
	}
	now = now.Add(2 * time.Minute)
	if g := q.Groups(); len(g) != 0 {
		t.Fatalf("an idle group was kept: %v", g)
	}
}

// TestClosingVersion: while an update is about to take version "0" away,
// new groups do not start on it, and a request of a group on it is found
// and granted behind any number of new groups waiting (past scanLimit).
func TestClosingVersion(t *testing.T) {
	q := New(Options{})
	first := req("first", 0, "t")
	first.Group = "old"
	out := waitAll(t, q, first)
	q.Dispatch(versionFleet("")) // "old" starts on a free worker
	if o := <-out; o.err != nil {
		t.Fatal(o.err)
	}
	f := versionFleet("2")
	f.View.Workers[1].RemoteRequests = 1 // only the "0" worker is free
	f.History = append(f.History, "2")
	if v := q.Groups()["old"].Version; v != "0" && v != "1" {
		t.Fatalf("group version %q", v)
	}
	q.Closing([]string{"0", "1"})
	var fresh []Request
	for i := range scanLimit + 10 {
		r := req(fmt.Sprintf("new-%d", i), 0, "t")
		r.Group = fmt.Sprintf("new-%d", i)
		fresh = append(fresh, r)
	}
	later := req("later", 0, "t")
	later.Group = "old"
	outs := waitAll(t, q, append(fresh, later)...)
	f.View.Workers[0].RemoteRequests, f.View.Workers[1].RemoteRequests = 0, 0
	if n := q.Dispatch(f); n != 1 {
		t.Fatalf("granted %d, want the old group's request alone", n)
	}
	if o := <-outs; o.key != "later" || o.err != nil {
		t.Fatalf("granted %+v, want the old group's request", o)
	}
	if q.WaitingFor("0")+q.WaitingFor("1") != 0 || q.Waiting() != scanLimit+10 {
		t.Fatalf("waiting for old versions %d, all %d", q.WaitingFor("0")+q.WaitingFor("1"), q.Waiting())
	}
}
