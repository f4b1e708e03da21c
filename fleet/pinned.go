package fleet

import (
	"context"
	"slices"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/diffrouter/diffusion-router/registry"
)

// pinnedPoll is how often an update looks again at the requests waiting
// for the weights it is about to take away.
const pinnedPoll = 50 * time.Millisecond

// lastHolders are the versions only batch's workers hold among the
// workers in rotation: taking the batch takes them away.
func lastHolders(snap registry.Snapshot, batch []registry.Worker) []string {
	in := map[string]bool{}
	for _, w := range batch {
		in[w.Key()] = true
	}
	var last []string
	for _, w := range batch {
		v := w.WeightVersion
		if v == "" || slices.Contains(last, v) {
			continue
		}
		elsewhere := slices.ContainsFunc(snap.Workers, func(o registry.Worker) bool {
			return !in[o.Key()] && o.Routable() && o.WeightVersion == v
		})
		if !elsewhere {
			last = append(last, v)
		}
	}
	return last
}

// waitForPinned holds an update batch back while requests wait that only
// the versions it takes away serve (Config.Pinned: pinned, or of a group
// on them), up to timeout; it returns the seconds it waited. Those still
// waiting then are refused by the queue (409, naming their group).
func (op *operations) waitForPinned(ctx context.Context, batch []registry.Worker, timeout time.Duration, log *logrus.Entry) float64 {
	if op.cfg.Pinned == nil {
		return 0
	}
	last := lastHolders(op.reg.Snapshot(), batch)
	if len(last) == 0 {
		return 0
	}
	// No new group starts on them from now on (the update's end opens
	// them again): what waits for them can only drain.
	op.cfg.Pinned.Closing(last)
	start := time.Now()
	deadline := start.Add(timeout)
	t := time.NewTicker(pinnedPoll)
	defer t.Stop()
	for {
		waiting := 0
		for _, v := range last {
			waiting += op.cfg.Pinned.WaitingFor(v)
		}
		if waiting == 0 {
			break
		}
		if !time.Now().Before(deadline) {
			log.WithFields(logrus.Fields{"versions": last, "waiting": waiting}).
				Warn("requests still wait for the weights the update takes away; past the timeout they are refused")
			break
		}
		select {
		case <-ctx.Done():
			return time.Since(start).Seconds()
		case <-t.C:
		}
	}
	return time.Since(start).Seconds()
}
