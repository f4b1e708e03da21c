package e2e

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/queue"
	"github.com/diffrouter/diffusion-router/wire"
)

// A crowd of requests each naming a new tenant in the body's "user" does
// not crowd out a tenant named by header: by default the body names no
// tenant (the crowd is one tenant, and the header's tenant gets its half);
// trusted (--trust-body-user), names over --max-tenants share one lane.
// Either way the honest tenant's requests are served while most of the
// crowd still waits, and idle tenants then leave GET /queue.
func TestSelfNamedTenantsTakeOneShare(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		extra []string
		lane  string // where the crowd waits
	}{
		{"default flags", nil, wire.DefaultTenant},
		{"trusted body, bounded", []string{"--trust-body-user", "--max-tenants", "4"}, queue.OthersTenant},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, urls := startFleet(t, 2, "--time-scale", "1", "--base", "40ms", "--per-step", "0", "--jitter", "0")
			r := startQueueRouter(t, urls, append([]string{"--tenant-idle-timeout", "2"}, tc.extra...)...)
			const crowd = 300
			var served atomic.Int64
			var wg sync.WaitGroup
			for i := range crowd {
				wg.Add(1)
				go func() {
					defer wg.Done()
					body := fmt.Sprintf(`{"prompt":"q","size":"256x256","user":"crowd-%d"}`, i)
					if res := sendImageBody(context.Background(), r.Front, body, nil); res.err != nil || res.status != http.StatusOK {
						t.Errorf("crowd request %d: %d %v %s", i, res.status, res.err, res.body)
					}
					served.Add(1)
				}()
			}
			// The crowd waits, all of it in one lane (the names that
			// found room in the bound had one request each, served first).
			lanes := map[string]int{}
			eventually(t, 20*time.Second, "the crowd queued in one lane", func() bool {
				clear(lanes)
				for _, x := range queueStatus(t, r.API)["tenants"].([]any) {
					if ts := x.(map[string]any); num(ts["waiting"]) > 0 {
						lanes[ts["tenant"].(string)] = num(ts["waiting"])
					}
				}
				return len(lanes) == 1 && lanes[tc.lane] >= crowd/2
			})
			for i := range 10 {
				res := sendImage(context.Background(), r.Front, map[string]string{wire.HeaderTenant: "honest"})
				if res.err != nil || res.status != http.StatusOK {
					t.Fatalf("honest request %d: %d %v %s", i, res.status, res.err, res.body)
				}
			}
			// Behind the crowd, the honest tenant's ten would end after
			// all of it; taking turns, they end while most of it waits.
			t.Logf("the honest tenant's 10 requests ended after %d of the crowd's %d", served.Load(), crowd)
			if n := served.Load(); n > crowd*6/10 {
				t.Fatalf("the honest tenant's 10 requests ended after %d of the crowd's %d: it waited behind the crowd", n, crowd)
			}
			wg.Wait()
			eventually(t, 20*time.Second, "idle tenants to leave GET /queue", func() bool {
				return len(queueStatus(t, r.API)["tenants"].([]any)) == 0
			})
		})
	}
}
