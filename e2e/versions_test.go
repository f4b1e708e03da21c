package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

// Weight-version rules: a pinned version no worker holds is refused at once
// (409 naming the versions held); requests naming the version a drain-mode
// update rolls out as their minimum, sent as it starts, are all served by
// it, none by the old weights; /health shows the history.
func TestWeightVersionRules(t *testing.T) {
	t.Parallel()
	_, urls := startFleet(t, 4, "--time-scale", "1", "--base", "300ms", "--per-step", "0", "--jitter", "0", "--update-time", "1s")
	r := startQueueRouter(t, urls)
	res := sendImage(context.Background(), r.Front, map[string]string{wire.HeaderPinVersion: "no-such-version"})
	var e struct{ Error string }
	if res.status != http.StatusConflict || json.Unmarshal(res.body, &e) != nil || !strings.Contains(e.Error, `"0"`) {
		t.Fatalf("pinned to a version no worker holds: %d %s, want 409 naming the versions held", res.status, res.body)
	}
	if res := sendImage(context.Background(), r.Front, map[string]string{wire.HeaderPinVersion: "0"}); res.status != 200 || res.header.Get(wire.HeaderWeightVersion) != "0" {
		t.Fatalf("pinned to the version held: %d %s", res.status, res.header.Get(wire.HeaderWeightVersion))
	}

	// Background work, so the update's batches take a while.
	background := make(chan []queueResult, 1)
	go func() { background <- burst(r.Front, 24, nil) }()
	update := make(chan response, 1)
	go func() {
		update <- postJSON(t, r.Front+"/update_weights_from_disk", map[string]any{"model_path": "/ckpt/step-2", "weight_version": "step-2",
			"mode": "drain", "max_unavailable": 1})
	}()
	eventually(t, 10*time.Second, "the update to start", func() bool {
		return get(t, r.API+"/health").JSON(t)["weight_versions"].(map[string]any)["updating"] == "step-2"
	})
	rule := burst(r.Front, 40, map[string]string{wire.HeaderMinVersion: "step-2", wire.HeaderPriority: "10"})
	for i, res := range rule {
		if res.err != nil || res.status != 200 || res.header.Get(wire.HeaderWeightVersion) != "step-2" {
			t.Fatalf("request %d with minimum step-2: %v %d served by version %q", i, res.err, res.status, res.header.Get(wire.HeaderWeightVersion))
		}
	}
	if up := <-update; up.Status != 200 {
		t.Fatalf("update = %d %s", up.Status, up.Body)
	}
	for _, res := range <-background {
		if res.err != nil || res.status != 200 {
			t.Fatalf("background request: %v %d", res.err, res.status)
		}
	}
	h := get(t, r.API+"/health").JSON(t)["weight_versions"].(map[string]any)
	if hist, _ := h["history"].([]any); len(hist) != 2 || hist[0] != "0" || hist[1] != "step-2" || h["updating"] != nil {
		t.Fatalf("weight_versions after the update: %v", h)
	}
	// The old version is gone, and no update brings it back.
	if res := sendImage(context.Background(), r.Front, map[string]string{wire.HeaderPinVersion: "0"}); res.status != http.StatusConflict {
		t.Fatalf("pinned to a version the fleet left: %d %s", res.status, res.body)
	}
}
