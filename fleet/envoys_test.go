package fleet

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/diffrouter/diffusion-router/envoyadmin"
	"github.com/diffrouter/diffusion-router/registry"
)

func TestEjections(t *testing.T) {
	tests := []struct {
		name string
		// first and second are what Envoys a and b report in two
		// observations in a row.
		first, second  [2]envoyadmin.HostStats
		wantQuarantine bool
	}{
		{name: "nobody ejects",
			first:  [2]envoyadmin.HostStats{{RqTotal: 5}, {RqTotal: 5}},
			second: [2]envoyadmin.HostStats{{RqTotal: 9}, {RqTotal: 9}}},
		{name: "a ejects, b sends nothing", wantQuarantine: true,
			first:  [2]envoyadmin.HostStats{{RqTotal: 5}, {RqTotal: 5}},
			second: [2]envoyadmin.HostStats{{RqTotal: 9, RqError: 4, FailedOutlier: true}, {RqTotal: 5}}},
		{name: "a ejects, b serves it without errors",
			first:  [2]envoyadmin.HostStats{{RqTotal: 5}, {RqTotal: 5}},
			second: [2]envoyadmin.HostStats{{RqTotal: 9, RqError: 4, FailedOutlier: true}, {RqTotal: 20}}},
		{name: "a ejects, b fails too", wantQuarantine: true,
			first:  [2]envoyadmin.HostStats{{RqTotal: 5}, {RqTotal: 5}},
			second: [2]envoyadmin.HostStats{{RqTotal: 9, RqError: 4, FailedOutlier: true}, {RqTotal: 20, RqError: 1}}},
		{name: "both eject", wantQuarantine: true,
			first:  [2]envoyadmin.HostStats{{RqTotal: 5}, {RqTotal: 5}},
			second: [2]envoyadmin.HostStats{{RqTotal: 9, FailedOutlier: true}, {RqTotal: 9, FailedOutlier: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			envoys := newFakeEnvoys("a", "b")
			m, rec, key, hp := fakeManager(t, envoys, Config{OutlierFailures: 3})
			for _, view := range [][2]envoyadmin.HostStats{tt.first, tt.second} {
				envoys.set("a", hp, view[0])
				envoys.set("b", hp, view[1])
				m.envoys.observeOnce(context.Background())
			}
			w, _ := m.Registry().Get(key)
			if got := w.State == registry.StateQuarantined; got != tt.wantQuarantine {
				t.Fatalf("state %s (%s), want quarantined=%v", w.State, w.Reason, tt.wantQuarantine)
			}
			if tt.wantQuarantine && (len(rec.seen) != 1 || rec.seen[0][2] != string(CauseEjected) || !strings.Contains(w.Reason, "outlier")) {
				t.Fatalf("transitions %v, reason %q", rec.seen, w.Reason)
			}
			if l := m.Loads()[key]; !l.Seen || l.Ejected != (tt.second[0].FailedOutlier || tt.second[1].FailedOutlier) {
				t.Fatalf("load %+v", l)
			}
		})
	}
}

func TestJudgeEjections(t *testing.T) {
	r := func(node string, ejected, failingHC bool, total, errors uint64) hostReport {
		return hostReport{node: node, host: "w:1", ejected: ejected, failingHC: failingHC, total: total, errors: errors}
	}
	tests := []struct {
		name         string
		prev, now    []hostReport
		wantEjected  bool
		wantVouchers []string
	}{
		{name: "nobody ejects", prev: []hostReport{r("a", false, false, 5, 0)}, now: []hostReport{r("a", false, false, 9, 0)}},
		{name: "one Envoy alone ejects", now: []hostReport{r("a", true, false, 9, 3)}, wantEjected: true},
		{name: "the other Envoy sent nothing", prev: []hostReport{r("a", false, false, 5, 0), r("b", false, false, 7, 0)},
			now: []hostReport{r("a", true, false, 9, 3), r("b", false, false, 7, 0)}, wantEjected: true},
		{name: "the other Envoy serves it without errors", prev: []hostReport{r("a", false, false, 5, 0), r("b", false, false, 7, 0)},
			now: []hostReport{r("a", true, false, 9, 3), r("b", false, false, 12, 0)}, wantEjected: true, wantVouchers: []string{"b"}},
		{name: "the other Envoy saw an error too", prev: []hostReport{r("b", false, false, 7, 0)},
			now: []hostReport{r("a", true, false, 9, 3), r("b", false, false, 12, 1)}, wantEjected: true},
		{name: "the other Envoy's health check fails", prev: []hostReport{r("b", false, false, 7, 0)},
			now: []hostReport{r("a", true, false, 9, 3), r("b", false, true, 12, 0)}, wantEjected: true},
		{name: "the other Envoy is new (no previous view)",
			now: []hostReport{r("a", true, false, 9, 3), r("b", false, false, 12, 0)}, wantEjected: true},
		{name: "both eject", prev: []hostReport{r("a", false, false, 1, 0), r("b", false, false, 1, 0)},
			now: []hostReport{r("a", true, false, 9, 3), r("b", true, false, 12, 0)}, wantEjected: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := judgeEjections(tt.now, reportIndex(tt.prev))
			v, ejected := got["w:1"]
			if ejected != tt.wantEjected || !slices.Equal(v.vouchers, tt.wantVouchers) {
				t.Fatalf("verdict = %+v (ejected %v), want ejected %v vouchers %v", v, ejected, tt.wantEjected, tt.wantVouchers)
			}
		})
	}
}
