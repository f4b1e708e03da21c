package heldjobs

import (
	"strings"
	"testing"

	"github.com/diffrouter/diffusion-router/wire"
)

// FuzzDescribe: whatever a create's body and content type, describing it
// answers a queued job or an error, never a panic, and a job it answers
// has a prompt.
func FuzzDescribe(f *testing.F) {
	for _, seed := range []struct{ ct, body string }{
		{"application/json", `{"prompt":"p","num_frames":16,"width":640}`},
		{"application/json", `{"prompt":5}`},
		{"multipart/form-data; boundary=x", "--x\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nfox\r\n--x--\r\n"},
		{"multipart/form-data; boundary=x", "--x\r\nContent-Disposition: form-data; name=\"input_reference\"; filename=\"a.png\"\r\n\r\n\x89PNG\r\n--x--\r\n"},
		{"multipart/form-data", "--\r\n"},
		{"text/plain", "prompt=p"},
	} {
		f.Add(seed.ct, seed.body)
	}
	d := wire.DefaultFilterConfig().Defaults
	f.Fuzz(func(t *testing.T, ct, body string) {
		o, err := describe(ct, strings.NewReader(body), d)
		if err == nil && (strings.TrimSpace(o.Prompt) == "" || o.Status != "queued" || o.Size == "" || o.Seconds == "") {
			t.Fatalf("described %q as %+v", body, o)
		}
	})
}
