package tagger

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/diffrouter/diffusion-router/jobid"
	"github.com/diffrouter/diffusion-router/wire"
)

func TestImageURLsWrapped(t *testing.T) {
	signer := jobid.NewSigner([]byte(testSecret))
	body := []byte(`{"id":"img_1","created":1795833091,"data":[{"url":"/v1/images/img_1_0/content","revised_prompt":"p"},{"b64_json":"AAAA"}]}`)
	out, changed, err := WrapIDs(body, signer, jobid.WorkerKey("http://w:1"), noVersion)
	if err != nil || !changed {
		t.Fatalf("WrapIDs: %v %v", changed, err)
	}
	var doc struct {
		Created json.Number `json:"created"`
		Data    []struct {
			URL string `json:"url"`
		} `json:"data"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Created != "1795833091" {
		t.Fatalf("number rewritten: %s", doc.Created)
	}
	_, inner, _, ok := jobPath(doc.Data[0].URL)
	if !ok {
		t.Fatalf("url %q", doc.Data[0].URL)
	}
	if orig, _, ok := signer.Unwrap(inner); !ok || orig != "img_1_0" {
		t.Fatalf("url id %q not wrapped", inner)
	}
	again, changed, _ := WrapIDs(out, signer, jobid.WorkerKey("http://w:1"), noVersion)
	if changed || string(again) != string(out) {
		t.Fatal("wrapping is not idempotent")
	}
	if _, _, err := WrapIDs([]byte("[1]"), signer, "k", noVersion); err == nil {
		t.Fatal("non-object accepted")
	}
}

func TestImageVariantsKeepTheirQuery(t *testing.T) {
	signer := jobid.NewSigner([]byte(testSecret))
	key := jobid.WorkerKey("http://w:1")
	body := []byte(`{"id":"img_9","data":[{"url":"/v1/images/img_9/content?variant=0"},{"url":"/v1/images/img_9/content?variant=1"}]}`)
	out, changed, err := WrapIDs(body, signer, key, noVersion)
	if err != nil || !changed {
		t.Fatalf("WrapIDs: %v %v", changed, err)
	}
	var doc struct {
		Data []struct {
			URL string `json:"url"`
		} `json:"data"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	for i, d := range doc.Data {
		want := "?variant=" + strconv.Itoa(i)
		if !strings.HasSuffix(d.URL, "/content"+want) {
			t.Fatalf("url %d = %q, want it to end in /content%s", i, d.URL, want)
		}
		_, inner, _, ok := jobPath(d.URL)
		if orig, k, ok2 := signer.Unwrap(inner); !ok || !ok2 || orig != "img_9" || k != key {
			t.Fatalf("url %d = %q: id not wrapped for the worker", i, d.URL)
		}
	}
	if doc.Data[0].URL == doc.Data[1].URL {
		t.Fatal("both images got the same url")
	}
}

// An answer the plugin must not change is never held: b64 images carry no
// id a client comes back with, so they stream through as they arrive.
func TestBase64AnswersStreamUnheld(t *testing.T) {
	eachRunner(t, func(t *testing.T, host proxytest.HostEmulator) {
		for _, tt := range []struct {
			format   string
			wantHold bool
		}{{"b64_json", false}, {"url", true}, {"", true}} {
			id := host.InitializeHttpContext()
			host.CallOnRequestHeaders(id, [][2]string{{":method", "POST"}, {":path", "/v1/images/generations"}, {"content-type", "application/json"}}, false)
			req := `{"prompt":"p"}`
			if tt.format != "" {
				req = `{"prompt":"p","response_format":"` + tt.format + `"}`
			}
			host.CallOnRequestBody(id, []byte(req), true)
			host.CallOnResponseHeaders(id, [][2]string{{":status", "200"}, {"content-type", "application/json"}, {wire.HeaderWorker, "http://w:1"}}, false)
			a := host.CallOnResponseBody(id, []byte(`{"id":"img_1","data":[{"b64_json":"`), false)
			if held := a != types.ActionContinue; held != tt.wantHold {
				t.Fatalf("response_format %q: first chunk action %v, want held=%v", tt.format, a, tt.wantHold)
			}
		}
	})
}
