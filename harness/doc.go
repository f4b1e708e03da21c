// Package harness holds what tests and measures the router and does not
// ship in it: bench (the load generator and the benchmark experiments),
// fakeworker (the sglang-diffusion stand-in) and freeport (ports for
// other processes to bind). The product's packages import none of them.
package harness
