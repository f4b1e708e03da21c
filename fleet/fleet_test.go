package fleet

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/envoy"
	"github.com/diffrouter/diffusion-router/registry"
)

type noEnvoys struct{}

func (noEnvoys) WaitSynced(context.Context, uint64) (int, error) { return 0, nil }
func (noEnvoys) Nodes() []envoy.Node                             { return nil }

func newManager(t *testing.T) *Manager {
	t.Helper()
	l := logrus.New()
	l.SetOutput(io.Discard)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return NewManager(ctx, registry.New(nil), noEnvoys{}, Config{ProbeTimeout: time.Second}, l.WithField("t", t.Name()))
}

func TestParseModels(t *testing.T) {
	tests := []struct {
		body      string
		wantTypes []string
		wantIDs   []string
		wantVideo bool
		wantErr   bool
	}{
		{body: `{"object":"list","data":[{"id":"Wan","task_type":"T2V"}]}`, wantTypes: []string{"T2V"}, wantIDs: []string{"Wan"}, wantVideo: true},
		{body: `{"data":[{"id":"flux","task_type":"T2I"},{"id":"flux","task_type":"T2I"}]}`, wantTypes: []string{"T2I"}, wantIDs: []string{"flux"}},
		{body: `{"data":[]}`},
		{body: `{"data":[{"id":1}]}`, wantErr: true},
		{body: `[]`, wantErr: true},
	}
	for _, tt := range tests {
		caps, err := ParseModels([]byte(tt.body))
		if tt.wantErr {
			if err == nil {
				t.Errorf("%s: accepted", tt.body)
			}
			continue
		}
		if err != nil || !caps.Known || !slices.Equal(caps.TaskTypes, tt.wantTypes) || !slices.Equal(caps.ModelIDs, tt.wantIDs) || caps.Video() != tt.wantVideo {
			t.Errorf("%s: %+v %v", tt.body, caps, err)
		}
	}
}

func TestResolveAddrRejectsBlockedAnswers(t *testing.T) {
	m := newManager(t)
	answers := map[string][]netip.Addr{
		"gpu-1":   {netip.MustParseAddr("::1"), netip.MustParseAddr("10.0.0.5")},
		"sneaky":  {netip.MustParseAddr("10.0.0.6"), netip.MustParseAddr("169.254.169.254")},
		"nothing": nil,
	}
	m.workers.resolve = func(_ context.Context, host string) ([]netip.Addr, error) {
		if a, ok := answers[host]; ok {
			return a, nil
		}
		return nil, errors.New("no such host")
	}
	tests := []struct {
		url, want string
		wantErr   bool
	}{
		{url: "http://gpu-1:8000", want: "10.0.0.5"},
		{url: "http://10.1.1.1:8000", want: "10.1.1.1"},
		{url: "http://sneaky:8000", wantErr: true},
		{url: "http://nothing:8000", wantErr: true},
		{url: "http://unknown:8000", wantErr: true},
	}
	for _, tt := range tests {
		u, err := registry.ParseWorkerURL(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		got, err := m.workers.resolveAddr(context.Background(), u)
		if tt.wantErr {
			if !errors.Is(err, registry.ErrInvalidURL) {
				t.Errorf("%s: err = %v, want ErrInvalidURL", tt.url, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: %q %v, want %q", tt.url, got, err, tt.want)
		}
	}
}

func TestAdmitUnreachableWorkerRegistersWithWarning(t *testing.T) {
	m := newManager(t)
	res, err := m.Admit(context.Background(), "http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if !res.Created || res.HealthError == "" || res.Worker.Caps.Known {
		t.Fatalf("result = %+v", res)
	}
	// Quarantined workers are re-admitted only when /health passes.
	if _, _, err := m.Quarantine(context.Background(), res.Worker.Key(), CauseMarkedDead, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Admit(context.Background(), "http://127.0.0.1:1/"); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("re-admit of unreachable worker: %v", err)
	}
	if w, _ := m.reg.Get(res.Worker.Key()); w.State != registry.StateQuarantined {
		t.Fatalf("state = %s", w.State)
	}
}

func TestCallResultOK(t *testing.T) {
	tests := []struct {
		r    CallResult
		want bool
	}{
		{CallResult{StatusCode: 200, Body: map[string]any{"success": true}}, true},
		{CallResult{StatusCode: 200, Body: map[string]any{"success": false}}, false},
		{CallResult{StatusCode: 200, Body: map[string]any{"raw": "ok"}}, true},
		{CallResult{StatusCode: 400, Body: map[string]any{}}, false},
		{CallResult{StatusCode: 502}, false},
	}
	for _, tt := range tests {
		if got := tt.r.OK(); got != tt.want {
			t.Errorf("%+v.OK() = %v", tt.r, got)
		}
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
