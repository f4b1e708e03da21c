package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/envoyadmin"
	"github.com/diffrouter/diffusion-router/registry"
)

func TestMetrics(t *testing.T) {
	reg := registry.New(nil)
	for _, raw := range []string{"http://10.0.0.1:1", "http://10.0.0.2:1", "http://10.0.0.3:1"} {
		u, err := registry.ParseWorkerURL(raw)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = reg.Add(u, u.Host, registry.Capabilities{}, registry.StateActive, "")
	}
	if _, _, _, err := reg.Move("http://10.0.0.3:1", registry.StateQuarantined, "test"); err != nil {
		t.Fatal(err)
	}
	m := New(reg, func() []envoyadmin.Node { return []envoyadmin.Node{{ID: "a", Synced: true}, {ID: "b"}} })
	m.XDSPush()
	m.XDSPush()
	m.Probe(true)
	m.Probe(false)
	m.WeightUpdate("partial", 3*time.Second)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`diffusion_router_workers{state="active"} 2`,
		`diffusion_router_workers{state="quarantined"} 1`,
		`diffusion_router_envoys_connected{synced="true"} 1`,
		`diffusion_router_envoys_connected{synced="false"} 1`,
		`diffusion_router_xds_pushes_total 2`,
		`diffusion_router_health_probes_total{result="failed"} 1`,
		`diffusion_router_weight_updates_total{outcome="partial"} 1`,
		`diffusion_router_weight_update_seconds_count 1`,
		`diffusion_router_registry_generation 4`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
