package tagger

import (
	"encoding/binary"
	"encoding/json"
	"strconv"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"

	"github.com/diffrouter/diffusion-router/leastwork"
	"github.com/diffrouter/diffusion-router/wire"
)

// flush adds this thread's picks to the shared count and its completions
// to the shared log.
func (p *picker) flush() {
	if n := p.picked; n > 0 {
		if p.updateGlobal(func(g *leastwork.Global) bool { g.Picks += n; return true }) == nil {
			p.picked = 0
		}
	}
	if len(p.done) == 0 {
		return
	}
	_ = casBytes(keyLog, func(log []byte) ([]byte, bool) {
		if len(log)+len(p.done) > leastwork.MaxLogBytes {
			return log, false // full until the next sync: these are dropped
		}
		return append(log[:len(log):len(log)], p.done...), true
	})
	p.done = p.done[:0]
}

// sync runs on every thread's tick: each adds its completions to the log,
// and the thread that takes the lease for this interval reports the table
// and fetches a new view.
func (p *picker) sync() {
	p.flush()
	now := nowMicro()
	raw, cas, err := proxywasm.GetSharedData(keyLease)
	if err != nil {
		return
	}
	if len(raw) == 8 && now-int64(binary.LittleEndian.Uint64(raw)) < (wire.SyncInterval*9/10).Microseconds() {
		return
	}
	if proxywasm.SetSharedData(keyLease, binary.LittleEndian.AppendUint64(nil, uint64(now)), cas) != nil {
		return // another thread took it
	}
	// The completions leave the table with this report (a lost report
	// loses a few speed samples, nothing else).
	rep := wire.LoadReport{Node: p.envoyID()}
	var log []byte
	if err := casBytes(keyLog, func(raw []byte) ([]byte, bool) {
		log = append(log[:0], raw...)
		return nil, len(raw) > 0
	}); err != nil {
		return
	}
	rep.Completions, _ = leastwork.DecodeCompletions(log)
	_ = casBytes(keyEnded, func(raw []byte) ([]byte, bool) {
		rep.Finished, _ = leastwork.DecodeEnded(raw)
		return nil, len(raw) > 0
	})
	p.expireJobs(now)
	v := p.currentView(now)
	if v != nil {
		rep.Generation = v.Generation
	}
	rep.Hosts = p.busyHosts(v, now, p.setGauges)
	body, err := json.Marshal(rep)
	if err != nil {
		return
	}
	headers, _ := p.reportHeaders(body)
	if _, err := proxywasm.DispatchHttpCall(p.cluster, headers, body, nil, uint32(syncTimeout.Milliseconds()), p.onView); err != nil {
		p.syncFailed("dispatch: " + err.Error())
	}
}

// busyHosts is the load part of a report: the workers with work counted
// here (an idle one adds nothing to the other Envoys' views, and a large
// fleet at a modest load has few busy workers, so the report stays
// small), and those failing now by the ejection rule of v (the view the
// caller read; nil: none yet). each, if set, sees every worker's record.
func (p *picker) busyHosts(v *wire.PickView, now int64, each func(leastwork.Host)) []wire.HostReport {
	out := []wire.HostReport{}
	var rule wire.Ejection
	if v != nil {
		rule = v.Ejection
	}
	for _, a := range p.hostList() {
		h := p.readHost(a)
		// A failing worker is listed even when idle: it failed fast.
		failing := leastwork.Failing(&h, rule, now)
		if h.Work > 0 || h.Requests > 0 || failing {
			r := hostReport(h)
			r.Failing = failing
			if leastwork.Overdue(&h, now) {
				r.Overdue = &wire.Overdue{RanMs: h.OverdueRanMs, ExpectedMs: h.OverdueExpectMs}
			}
			out = append(out, r)
		}
		if each != nil {
			each(h)
		}
	}
	return out
}

// hostReport is a worker's record as a report (or a queue call) says it.
func hostReport(h leastwork.Host) wire.HostReport {
	return wire.HostReport{Addr: h.Addr, Work: max(h.Work, 0), Requests: max(h.Requests, 0), MsPerCost: h.MsPerCost, Samples: h.Samples}
}

// signedHeaders are the headers of a call to the control plane's path,
// signed with the job-id secret as syncs are.
func (p *picker) signedHeaders(path string, body []byte) [][2]string {
	return signedAt(p.cluster, p.secret, path, body, nowMicro()/1000)
}

// signedAt is signedHeaders at a given signing time.
func signedAt(cluster string, secret []byte, path string, body []byte, at int64) [][2]string {
	return [][2]string{{":method", "POST"}, {":path", path}, {":authority", cluster},
		{"content-type", "application/json"}, {wire.HeaderSyncTime, strconv.FormatInt(at, 10)},
		{wire.HeaderSyncSignature, wire.SyncSignature(secret, at, body)}}
}

// reportHeaders are signedHeaders for a load report, signed at a time no
// other report of this Envoy was (reportTime); ok is false when reports
// come so fast that the time ran reportAhead ahead of the clock.
func (p *picker) reportHeaders(body []byte) ([][2]string, bool) {
	now := nowMicro() / 1000
	at := p.reportTime(now)
	return signedAt(p.cluster, p.secret, wire.PathFilterSync, body, at), at-now <= reportAhead.Milliseconds()
}

// reportTime is the time (Unix ms) a report is signed at: now, but never
// the time another of this Envoy's reports was signed at (the control
// plane takes each node's signing times as increasing, so two reports in
// one millisecond would refuse the second as a replay).
func (p *picker) reportTime(now int64) int64 {
	at := now
	_ = casBytes(keySigned, func(raw []byte) ([]byte, bool) {
		if len(raw) == 8 {
			at = max(at, int64(binary.LittleEndian.Uint64(raw))+1)
		}
		return binary.LittleEndian.AppendUint64(nil, uint64(at)), true
	})
	return at
}

// reportNow tells the control plane at once that a worker has a free slot
// while requests wait in its queue (a regular sync may be 100 ms away):
// the load part of a sync, without taking the completion log, fire and
// forget.
func (p *picker) reportNow(now int64, freed ...string) {
	v := p.currentView(now)
	if v == nil || v.Queued == 0 {
		return
	}
	rep := wire.LoadReport{Node: p.envoyID(), Generation: v.Generation, Hosts: p.busyHosts(v, now, nil), Freed: freed}
	body, err := json.Marshal(rep)
	if err != nil {
		return
	}
	headers, ok := p.reportHeaders(body)
	if !ok {
		return // the regular sync will say it
	}
	if _, err := proxywasm.DispatchHttpCall(p.cluster, headers, body, nil,
		uint32(syncTimeout.Milliseconds()), func(int, int, int) {}); err != nil {
		proxywasm.LogWarnf("diffusion-tagger: report a free slot: %v", err)
	}
}

// envoyID names this Envoy to the control plane, the same from every
// thread: its node id (when the VM can read it) and a random suffix the
// first syncing thread draws, so two Envoys never share a name (their
// reports would overwrite each other and each would take the other's work
// for its own). newPicker made the key, so the compare-and-swap is real.
func (p *picker) envoyID() string {
	var id string
	err := casBytes(keyNode, func(raw []byte) ([]byte, bool) {
		if len(raw) > 0 {
			id = string(raw)
			return nil, false
		}
		id = p.node + "-" + newRequestID()[:12]
		return []byte(id), true
	})
	if err != nil {
		return p.node + "-unnamed"
	}
	return id
}
