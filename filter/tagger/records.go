package tagger

import (
	"errors"
	"slices"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/diffrouter/diffusion-router/leastwork"
)

// The least-work table in shared data, as records (leastwork.AppendHost):
// one per worker under keyHostPrefix+address, the shared part under
// keyGlobal, and under keyHosts the list of workers that have a record
// (for the sync report and for forgetting). A request reads the global
// record and the records of the workers it weighs, and changes only the
// records it touches: nothing on the request path grows with the fleet.
//
// A worker's record is made only by the thread that adds the worker to
// the list (compare-and-swap), before the view that lists it is stored:
// no thread can have counted anything on it yet, so making it cannot
// overwrite a count.
const (
	keyGlobal     = "diffusion-router.pick.global"
	keyHosts      = "diffusion-router.pick.hosts"
	keyHostPrefix = "diffusion-router.pick.host."
	// maxHostKeys bounds the thread's cache of record keys.
	maxHostKeys = 8192
)

// errNoRecord: the worker has no record (the view never listed it).
var errNoRecord = errors.New("no record for this worker")

// hostKey is the shared-data key of a worker's record, cached so the
// request path does not build it again.
func (p *picker) hostKey(addr string) string {
	if k, ok := p.keys[addr]; ok {
		return k
	}
	if len(p.keys) >= maxHostKeys {
		clear(p.keys)
	}
	k := keyHostPrefix + addr
	p.keys[addr] = k
	return k
}

// readHost is a worker's record (empty when it has none or it cannot be
// read: nothing counted).
func (p *picker) readHost(addr string) leastwork.Host {
	raw, _, err := proxywasm.GetSharedData(p.hostKey(addr))
	if err != nil {
		return leastwork.Host{Addr: addr}
	}
	h, _ := leastwork.DecodeHost(raw, addr)
	return h
}

// readGlobal is the shared part of the table, decoded into the thread's
// reused copy.
func (p *picker) readGlobal() *leastwork.Global {
	raw, _, err := proxywasm.GetSharedData(keyGlobal)
	if err != nil {
		raw = nil
	}
	_ = leastwork.DecodeGlobal(raw, &p.global) // unreadable: starts over, empty
	return &p.global
}

// updateHost applies f to a worker's record by compare-and-swap. f runs
// again on a fresh read when another thread wrote meanwhile. (A change that
// reads the shared part reads it first: readGlobal.)
func (p *picker) updateHost(addr string, f func(h *leastwork.Host) bool) error {
	key := p.hostKey(addr)
	for range casTries {
		raw, cas, err := proxywasm.GetSharedData(key)
		if errors.Is(err, types.ErrorStatusNotFound) {
			return errNoRecord
		}
		if err != nil {
			return err
		}
		h, _ := leastwork.DecodeHost(raw, addr) // unreadable: starts over
		if !f(&h) {
			return nil
		}
		p.buf = leastwork.AppendHost(p.buf[:0], h)
		if err := proxywasm.SetSharedData(key, p.buf, cas); !errors.Is(err, types.ErrorStatusCasMismatch) {
			return err
		}
	}
	return errors.New("shared data " + key + ": too much contention")
}

// updateGlobal applies f to the shared part by compare-and-swap.
func (p *picker) updateGlobal(f func(g *leastwork.Global) bool) error {
	return casBytes(keyGlobal, func(raw []byte) ([]byte, bool) {
		_ = leastwork.DecodeGlobal(raw, &p.global)
		if !f(&p.global) {
			return nil, false
		}
		p.buf = leastwork.AppendGlobal(p.buf[:0], p.global)
		return p.buf, true
	})
}

// recordHosts makes sure every worker in addrs has a record: the ones
// missing from the list are added to it, and the thread that added a
// worker makes its record if there is none (a forgotten worker's emptied
// record stays: a request a stale view sent it may be counted there). The
// thread remembers the list it last read, so an unchanged fleet costs one
// small read.
func (p *picker) recordHosts(addrs []string) error {
	if _, cas, err := proxywasm.GetSharedData(keyHosts); err == nil && cas == p.listedCAS &&
		!slices.ContainsFunc(addrs, func(a string) bool { return !p.listed[a] }) {
		return nil
	}
	for range casTries {
		raw, cas, err := proxywasm.GetSharedData(keyHosts)
		if err != nil {
			return err
		}
		list, _ := leastwork.DecodeNames(raw)
		have := make(map[string]bool, len(list)+len(addrs))
		for _, a := range list {
			have[a] = true
		}
		var added []string
		for _, a := range addrs {
			if !have[a] {
				have[a] = true
				list = append(list, a)
				added = append(added, a)
			}
		}
		p.listed, p.listedCAS = have, cas
		if len(added) == 0 {
			return nil
		}
		err = proxywasm.SetSharedData(keyHosts, leastwork.AppendNames(nil, list), cas)
		if errors.Is(err, types.ErrorStatusCasMismatch) {
			continue
		}
		if err != nil {
			return err
		}
		p.listedCAS = 0 // its new cas is unknown: read it next time
		for _, a := range added {
			if _, _, err := proxywasm.GetSharedData(p.hostKey(a)); !errors.Is(err, types.ErrorStatusNotFound) {
				continue
			}
			if err := proxywasm.SetSharedData(p.hostKey(a), nil, 0); err != nil {
				return err
			}
		}
		return nil
	}
	return errors.New("shared data " + keyHosts + ": too much contention")
}

// hostList is the workers that have a record.
func (p *picker) hostList() []string {
	raw, _, err := proxywasm.GetSharedData(keyHosts)
	if err != nil {
		return nil
	}
	list, _ := leastwork.DecodeNames(raw)
	return list
}

// forgetHosts drops the records of workers the view no longer lists and
// that have nothing counted, so the table does not grow with every worker
// ever seen. A dropped record is emptied, not deleted (shared data keeps
// its keys); a worker that comes back is listed and recorded again.
func (p *picker) forgetHosts(keep map[string]bool) {
	var gone []string
	for _, a := range p.hostList() {
		if keep[a] {
			continue
		}
		emptied := false
		_ = p.updateHost(a, func(h *leastwork.Host) bool {
			emptied = h.Work == 0 && h.Requests == 0
			if !emptied {
				return false
			}
			*h = leastwork.Host{Addr: a}
			return true
		})
		if emptied {
			gone = append(gone, a)
		}
	}
	if len(gone) == 0 {
		return
	}
	_ = casBytes(keyHosts, func(raw []byte) ([]byte, bool) {
		list, _ := leastwork.DecodeNames(raw)
		kept := slices.DeleteFunc(list, func(a string) bool { return slices.Contains(gone, a) })
		return leastwork.AppendNames(nil, kept), true
	})
}
