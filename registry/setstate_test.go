package registry

// setState is Move without the state left, as the tests use it.
func (r *Registry) setState(key string, to State, reason string, from ...State) (Worker, uint64, error) {
	_, w, gen, err := r.Move(key, to, reason, from...)
	return w, gen, err
}
