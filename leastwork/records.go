package leastwork

import (
	"encoding/binary"
	"errors"
	"math"

	"github.com/diffrouter/diffusion-router/wire"
)

// The filter keeps its table in proxy-wasm shared data as records: one per
// worker (AppendHost), one for what they share (AppendGlobal) and the list
// of workers that have a record (AppendNames). A request reads the global
// record and the records of the workers it weighs, and writes the one it
// picks: nothing it does grows with the fleet.

// recordFormat versions the encodings: Envoy keeps shared data across a
// plugin reload, and a new plugin must not misread an old record.
const recordFormat = 10

// ErrFormat is a record this code cannot read.
var ErrFormat = errors.New("leastwork: record encoding not understood")

// AppendHost appends h's record (without its address: the record's key
// names it) to b.
func AppendHost(b []byte, h Host) []byte {
	b = append(b, recordFormat)
	b = binary.AppendVarint(b, h.Work)
	b = binary.AppendVarint(b, h.Requests)
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(h.MsPerCost))
	b = binary.AppendVarint(b, h.Samples)
	b = binary.AppendVarint(b, h.LastDone)
	b = binary.AppendVarint(b, h.Streak)
	b = binary.AppendVarint(b, h.SampledAt)
	b = binary.AppendVarint(b, h.Failures)
	b = binary.AppendVarint(b, h.GatewayFailures)
	b = binary.AppendVarint(b, h.FailedAt)
	b = binary.AppendVarint(b, h.OverdueAt)
	b = binary.AppendVarint(b, h.OverdueRanMs)
	return binary.AppendVarint(b, h.OverdueExpectMs)
}

// DecodeHost reads AppendHost's record of the worker at addr. An empty
// record is a worker with nothing counted.
func DecodeHost(b []byte, addr string) (Host, error) {
	h := Host{Addr: addr}
	if len(b) == 0 {
		return h, nil
	}
	if b[0] != recordFormat {
		return h, ErrFormat
	}
	r := reader{b: b[1:]}
	h.Work, h.Requests, h.MsPerCost = r.varint(), r.varint(), r.float()
	h.Samples, h.LastDone, h.Streak, h.SampledAt = r.varint(), r.varint(), r.varint(), r.varint()
	h.Failures, h.GatewayFailures, h.FailedAt = r.varint(), r.varint(), r.varint()
	h.OverdueAt, h.OverdueRanMs, h.OverdueExpectMs = r.varint(), r.varint(), r.varint()
	if r.err != nil || len(r.b) != 0 {
		return Host{Addr: addr}, ErrFormat
	}
	return h, nil
}

// AppendGlobal appends g's record to b.
func AppendGlobal(b []byte, g Global) []byte {
	b = append(b, recordFormat)
	b = binary.AppendUvarint(b, uint64(len(g.Tasks)))
	for _, tc := range g.Tasks {
		b = appendString(b, tc.Task)
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(tc.Avg))
		b = binary.AppendVarint(b, tc.Samples)
	}
	b = binary.AppendVarint(b, g.Picks)
	for _, f := range []float64{g.Fit.Base, g.Fit.N, g.Fit.C, g.Fit.T, g.Fit.CC, g.Fit.CT} {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(f))
	}
	return b
}

// DecodeGlobal reads AppendGlobal's record into g, reusing g.Tasks. An
// empty record is the empty global part; on error g is that too.
func DecodeGlobal(b []byte, g *Global) error {
	// The task names of the previous decode are reused: a decode on the
	// request path allocates nothing once they are known.
	prev := g.Tasks[:cap(g.Tasks)]
	g.Tasks, g.Picks, g.Fit = g.Tasks[:0], 0, Fit{}
	if len(b) == 0 {
		return nil
	}
	if b[0] != recordFormat {
		return ErrFormat
	}
	r := reader{b: b[1:], name: func(b []byte) string {
		for _, tc := range prev {
			if tc.Task == string(b) {
				return tc.Task
			}
		}
		return string(b)
	}}
	n := r.count()
	for i := uint64(0); i < n && r.err == nil; i++ {
		g.Tasks = append(g.Tasks, TaskCost{Task: r.string(), Avg: r.float(), Samples: r.varint()})
	}
	g.Picks = r.varint()
	g.Fit = Fit{Base: r.float(), N: r.float(), C: r.float(), T: r.float(), CC: r.float(), CT: r.float()}
	if r.err != nil || len(r.b) != 0 {
		g.Tasks, g.Picks, g.Fit = g.Tasks[:0], 0, Fit{}
		return ErrFormat
	}
	return nil
}

// AppendNames appends a list of worker addresses to b.
func AppendNames(b []byte, names []string) []byte {
	b = append(b, recordFormat)
	b = binary.AppendUvarint(b, uint64(len(names)))
	for _, n := range names {
		b = appendString(b, n)
	}
	return b
}

// DecodeNames reads AppendNames' list; empty input is the empty list.
func DecodeNames(b []byte) ([]string, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if b[0] != recordFormat {
		return nil, ErrFormat
	}
	r := reader{b: b[1:]}
	n := r.count()
	out := make([]string, 0, n)
	for i := uint64(0); i < n && r.err == nil; i++ {
		out = append(out, r.string())
	}
	if r.err != nil || len(r.b) != 0 {
		return nil, ErrFormat
	}
	return out, nil
}

// AppendCompletion adds c to an encoded log, unless the log is full.
func AppendCompletion(log []byte, c wire.Completion) []byte {
	if len(log) >= MaxLogBytes {
		return log
	}
	log = appendString(log, c.Addr)
	log = binary.AppendVarint(log, c.Cost)
	log = binary.AppendVarint(log, c.Sent)
	log = binary.AppendVarint(log, c.Done)
	gpu := byte(0)
	if c.GPU {
		gpu = 1
	}
	return append(log, gpu)
}

// DecodeCompletions reads a log AppendCompletion wrote, the latest
// MaxCompletions of it.
func DecodeCompletions(log []byte) ([]wire.Completion, error) {
	r := reader{b: log}
	var out []wire.Completion
	for len(r.b) > 0 && r.err == nil {
		out = append(out, wire.Completion{Addr: r.string(), Cost: r.varint(), Sent: r.varint(), Done: r.varint(), GPU: r.flag()})
	}
	if r.err != nil {
		return nil, r.err
	}
	if len(out) > MaxCompletions {
		out = out[len(out)-MaxCompletions:]
	}
	return out, nil
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// reader decodes, remembering the first error so a caller checks once;
// name, if set, turns name bytes into a string (interned).
type reader struct {
	b    []byte
	err  error
	name func([]byte) string
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = ErrFormat
		return 0
	}
	r.b = r.b[n:]
	return v
}

// count is a length that must fit in what is left (each item takes a byte
// or more), so a corrupt count cannot make a huge allocation.
func (r *reader) count() uint64 {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.err = ErrFormat
		return 0
	}
	return n
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = ErrFormat
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) flag() bool {
	if r.err != nil || len(r.b) < 1 || r.b[0] > 1 {
		r.err = ErrFormat
		return false
	}
	v := r.b[0] == 1
	r.b = r.b[1:]
	return v
}

func (r *reader) float() float64 {
	if r.err != nil || len(r.b) < 8 {
		r.err = ErrFormat
		return 0
	}
	v := math.Float64frombits(binary.LittleEndian.Uint64(r.b))
	r.b = r.b[8:]
	return v
}

func (r *reader) string() string {
	n := r.count()
	if r.err != nil {
		return ""
	}
	var s string
	if r.name != nil {
		s = r.name(r.b[:n])
	} else {
		s = string(r.b[:n])
	}
	r.b = r.b[n:]
	return s
}
