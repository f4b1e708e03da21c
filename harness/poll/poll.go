// Package poll waits, in tests, for a condition to hold: readiness is
// polled with a deadline, never slept for.
package poll

import (
	"testing"
	"time"
)

// Until checks cond every interval until it holds, and fails the test if
// it does not within timeout.
func Until(t testing.TB, timeout, every time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(every)
	}
}
