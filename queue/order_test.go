package queue

import (
	"slices"
	"testing"
	"time"
)

// arrival is a fairness rule that keeps every tenant level: a band is
// served in arrival order, whoever sent what.
type arrival struct{}

func (arrival) enter(string, float64) float64                  { return 0 }
func (arrival) step(*Request) float64                          { return 0 }
func (arrival) granted(*Request, time.Time, func(string) bool) {}
func (arrival) forget(time.Time, func(string) bool)            {}
func (arrival) status(map[string]int) []TenantStatus           { return []TenantStatus{} }

// TestFairnessIsOneRule: the order between tenants is the fairness rule's
// alone: the same requests come out in share order with the default rule
// and in arrival order with another.
func TestFairnessIsOneRule(t *testing.T) {
	for _, tc := range []struct {
		name string
		fair fairness
		want []string
	}{
		{"shares", nil, []string{"a1", "b1", "a2", "b2"}},
		{"arrival", arrival{}, []string{"a1", "a2", "b1", "b2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := New(Options{})
			if tc.fair != nil {
				q.fair = tc.fair
			}
			out := waitAll(t, q, req("a1", 0, "a"), req("a2", 0, "a"), req("b1", 0, "b"), req("b2", 0, "b"))
			if got := grants(t, q, out, 4); !slices.Equal(got, tc.want) {
				t.Fatalf("granted %v, want %v", got, tc.want)
			}
		})
	}
}
