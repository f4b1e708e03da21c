package fleet

import "testing"

func TestUnfinishedJobs(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       int
		last       string
		err        bool
	}{
		{"empty list", `{"object":"list","data":[]}`, 0, "", false},
		{"all ended", `{"data":[{"id":"a","status":"completed"},{"id":"b","status":"failed"}]}`, 0, "b", false},
		{"queued and running", `{"data":[{"id":"a","status":"queued"},{"id":"b","status":"in_progress"},{"id":"c","status":"completed"}]}`, 2, "c", false},
		{"not JSON", `<html>`, 0, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, last, err := unfinishedJobs([]byte(tc.body))
			if (err != nil) != tc.err || n != tc.want || last != tc.last {
				t.Fatalf("unfinishedJobs = %d %q %v, want %d %q err=%v", n, last, err, tc.want, tc.last, tc.err)
			}
		})
	}
}
