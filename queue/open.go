package queue

// openNow is the now rule of free slots: it keeps the workers open now,
// at a free slot or granted ahead (Queue.opens, ahead.go).
func openNow(d *dispatch, _ *Request, cands []int) []int {
	out := cands[:0]
	for _, i := range cands {
		if d.open[i] {
			out = append(out, i)
		}
	}
	return out
}
