package tagger

import (
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"strconv"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/diffrouter/diffusion-router/leastwork"
)

// roundRobin is strict round-robin: the next eligible worker in the
// view's order after the one the last request of this kind went to,
// whichever thread sent it (the position is shared data, so one Envoy
// keeps one cycle where Envoy's own round-robin keeps one per thread),
// and the one after it for a retry.
type roundRobin struct{}

// keyTurnPrefix names the shared round-robin positions, one per pool and
// (listed) model.
const keyTurnPrefix = "diffusion-router.pick.turn."

func (roundRobin) choose(p *picker, r *pickRequest) (leastwork.Choice, pickStatus) {
	v, cands := r.view, r.cands
	key := keyTurnPrefix + strconv.Itoa(int(r.pool))
	if r.model != "" && slices.Contains(v.Workers[cands[0]].Models, r.model) {
		key += "/" + r.model // the model narrowed the list: a cycle of its own
	}
	if _, _, err := proxywasm.GetSharedData(key); errors.Is(err, types.ErrorStatusNotFound) {
		_ = proxywasm.SetSharedData(key, nil, 0)
	}
	var turn uint64
	if err := casBytes(key, func(raw []byte) ([]byte, bool) {
		turn = 0
		if len(raw) == 8 {
			turn = binary.LittleEndian.Uint64(raw)
		}
		return binary.LittleEndian.AppendUint64(nil, turn+1), true
	}); err != nil {
		proxywasm.LogWarnf("diffusion-tagger: round-robin: %v", err)
		return leastwork.Choice{}, pickNone
	}
	n := uint64(len(cands))
	c := leastwork.Choice{First: v.Workers[cands[turn%n]].Addr}
	if n > 1 {
		c.Second = v.Workers[cands[(turn+1)%n]].Addr
	}
	if err := p.count(c.First, r.cost, math.MaxInt64); err != nil {
		proxywasm.LogWarnf("diffusion-tagger: pick %s: %v", c.First, err)
		return leastwork.Choice{}, pickNone
	}
	return c, pickMade
}
