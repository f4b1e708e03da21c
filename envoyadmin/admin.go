package envoyadmin

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// HostStats is what one Envoy reports about one upstream host.
type HostStats struct {
	Cluster  string
	Hostname string // as set in EDS: host:port of the worker URL
	Address  string // ip:port Envoy connects to
	// Active requests in flight from this Envoy to the host.
	RqActive uint64
	RqTotal  uint64
	RqError  uint64
	// Health as this Envoy sees it.
	FailedActiveHC   bool
	FailedOutlier    bool
	EDSHealth        string
	PendingActiveHC  bool
	ActiveHCTimeouts bool
}

// AdminClient reads an Envoy admin interface.
type AdminClient struct {
	HTTP *http.Client
}

// NewAdminClient returns a client with a short timeout: admin answers are
// local and fast, and a hung Envoy must not stall the control plane.
func NewAdminClient() *AdminClient {
	return &AdminClient{HTTP: &http.Client{Timeout: 3 * time.Second}}
}

// Clusters fetches /clusters?format=json from the admin address (host:port)
// and returns the stats of every host in every cluster.
func (c *AdminClient) Clusters(ctx context.Context, admin string) ([]HostStats, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/clusters?format=json", nil)
	if err != nil {
		return nil, fmt.Errorf("envoy admin %s: %w", admin, err)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("envoy admin %s: %w", admin, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("envoy admin %s: read clusters: %w", admin, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("envoy admin %s: /clusters answered %d", admin, resp.StatusCode)
	}
	return ParseClusters(body)
}

// ParseClusters decodes the admin /clusters?format=json document.
func ParseClusters(body []byte) ([]HostStats, error) {
	var doc adminv3.Clusters
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("decode envoy /clusters: %w", err)
	}
	var out []HostStats
	for _, cs := range doc.GetClusterStatuses() {
		for _, h := range cs.GetHostStatuses() {
			hs := HostStats{Cluster: cs.GetName(), Hostname: h.GetHostname()}
			if sa := h.GetAddress().GetSocketAddress(); sa != nil {
				hs.Address = sa.GetAddress() + ":" + strconv.FormatUint(uint64(sa.GetPortValue()), 10)
			}
			for _, st := range h.GetStats() {
				switch st.GetName() {
				case "rq_active":
					hs.RqActive = st.GetValue()
				case "rq_total":
					hs.RqTotal = st.GetValue()
				case "rq_error":
					hs.RqError = st.GetValue()
				}
			}
			hh := h.GetHealthStatus()
			hs.FailedActiveHC = hh.GetFailedActiveHealthCheck()
			hs.FailedOutlier = hh.GetFailedOutlierCheck()
			hs.PendingActiveHC = hh.GetPendingActiveHc()
			hs.ActiveHCTimeouts = hh.GetActiveHcTimeout()
			hs.EDSHealth = hh.GetEdsHealthStatus().String()
			out = append(out, hs)
		}
	}
	return out, nil
}

// Ready reports whether the admin interface answers /ready with 200 (Envoy
// has its initial configuration and is serving).
func (c *AdminClient) Ready(ctx context.Context, admin string) error {
	return c.expectOK(ctx, http.MethodGet, admin, "/ready")
}

// expectOK sends a request to the admin interface and wants a 200.
func (c *AdminClient) expectOK(ctx context.Context, method, admin, path string) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+admin+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("envoy admin %s: %w", admin, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("envoy admin %s: %s answered %d", admin, path, resp.StatusCode)
	}
	return nil
}

// EndpointStats reads one upstream endpoint's per-endpoint stats (health
// and requests in flight) with a filtered /stats query, which stays cheap
// with thousands of hosts where /clusters does not.
func (c *AdminClient) EndpointStats(ctx context.Context, admin, cluster, address string) (healthy bool, rqActive uint64, found bool, err error) {
	prefix := "cluster." + cluster + ".endpoint." + strings.NewReplacer(":", "_").Replace(address) + "."
	vals, err := c.stats(ctx, admin, "^"+regexp.QuoteMeta(prefix)+"(healthy|rq_active)$")
	if err != nil {
		return false, 0, false, err
	}
	h, found := vals[prefix+"healthy"]
	return h == 1, vals[prefix+"rq_active"], found, nil
}

// PendingRequests reads how many requests of a cluster wait for a
// connection to their (already picked) host.
func (c *AdminClient) PendingRequests(ctx context.Context, admin, cluster string) (uint64, error) {
	return c.Stat(ctx, admin, "cluster."+cluster+".upstream_rq_pending_active")
}

// Stat reads one counter or gauge.
func (c *AdminClient) Stat(ctx context.Context, admin, name string) (uint64, error) {
	vals, err := c.Stats(ctx, admin, name)
	if err != nil {
		return 0, err
	}
	v, ok := vals[name]
	if !ok {
		return 0, fmt.Errorf("envoy admin %s: no stat %s", admin, name)
	}
	return v, nil
}

// Stats reads several counters or gauges in one call; a stat Envoy does
// not have (yet) is absent from the answer.
func (c *AdminClient) Stats(ctx context.Context, admin string, names ...string) (map[string]uint64, error) {
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = regexp.QuoteMeta(n)
	}
	return c.stats(ctx, admin, "^("+strings.Join(quoted, "|")+")$")
}

// stats reads the numeric stats whose names match filter.
func (c *AdminClient) stats(ctx context.Context, admin, filter string) (map[string]uint64, error) {
	q := url.Values{"filter": {filter}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/stats?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("envoy admin %s: %w", admin, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("envoy admin %s: /stats: status %d: %v", admin, resp.StatusCode, err)
	}
	out := map[string]uint64{}
	for _, line := range strings.Split(string(body), "\n") {
		name, value, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(value), 10, 64); err == nil {
			out[name] = n
		}
	}
	return out, nil
}

// DrainListeners makes Envoy stop accepting connections on its listeners;
// connections already open carry on.
func (c *AdminClient) DrainListeners(ctx context.Context, admin string) error {
	return c.expectOK(ctx, http.MethodPost, admin, "/drain_listeners")
}
