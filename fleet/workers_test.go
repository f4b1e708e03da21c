package fleet

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/diffrouter/diffusion-router/registry"
)

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
