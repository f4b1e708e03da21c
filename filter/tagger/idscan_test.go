package tagger

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/diffrouter/diffusion-router/jobid"
)

func decodeAny(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, b)
	}
	return v
}

// checkScanAgainstDecode: wherever the scanner takes a document, its answer
// means the same as the decoding path's.
func checkScanAgainstDecode(t *testing.T, body []byte) {
	signer := jobid.NewSigner([]byte(testSecret))
	wrap := func(id string) (string, bool) {
		if _, _, wrapped := signer.Unwrap(id); wrapped {
			return id, false
		}
		return signer.Wrap(id, "k1"), true
	}
	fast, fastChanged, ok := wrapIDsScanned(body, wrap)
	slow, slowChanged, err := wrapIDsDecoded(body, wrap)
	if !ok {
		return
	}
	if err != nil {
		t.Fatalf("the scanner took %q, which does not decode: %v", body, err)
	}
	if fastChanged != slowChanged {
		t.Fatalf("%q: changed %v (scan) vs %v (decode)", body, fastChanged, slowChanged)
	}
	if !reflect.DeepEqual(decodeAny(t, fast), decodeAny(t, slow)) {
		t.Fatalf("%q:\nscan   %s\ndecode %s", body, fast, slow)
	}
}

var idSamples = []string{
	`{"id":"video_1","object":"video","status":"queued"}`,
	`{"created":1,"data":[{"url":"/v1/images/img_1/content?variant=0","revised_prompt":"x"},{"url":"/v1/images/img_1/content?variant=1"}],"id":"img_1"}`,
	`{"object":"list","data":[{"id":"v1","status":"completed"},{"id":"v2"}],"has_more":false,"first_id":"v1"}`,
	`{"data":[{"b64_json":"AAAA"}]}`,
	` { "id" : "a" , "data" : [ 1 , "x" , [ {"id":"nested"} ] , {"id":"b","url":"https://cdn/x.png"} ] } `,
	`{"id":"a","id":"b","data":{"id":"not-an-item"}}`,
	`{"\u0069d":"escaped-key"}`,
	`{"id":"esc\"aped"}`,
	`{"id":""}`,
	"{\"id\":\"\x99\",\"data\":[{\"url\":\"/v1/images/\x99/content\"}]}",
	`{"id":12,"data":null}`,
	`[1,2]`,
	`{"id":"a"`,
	`{"data":[{"url":"/v1/videos/v9/content","id":"v9"}],"nested":{"id":"deep","data":[{"id":"deeper"}]}}`,
}

func TestScanMatchesDecode(t *testing.T) {
	for _, s := range idSamples {
		checkScanAgainstDecode(t, []byte(s))
	}
	// The scanner keeps what it does not change byte for byte.
	body := []byte(`{"status": "queued",   "id": "video_1", "z": 1.50}`)
	out, changed, ok := wrapIDsScanned(body, func(string) (string, bool) { return "W", true })
	if !ok || !changed || string(out) != `{"status": "queued",   "id": "W", "z": 1.50}` {
		t.Fatalf("splice = %s (changed %v, ok %v)", out, changed, ok)
	}
	// Escapes where an id may be go to the decoding path.
	for _, s := range []string{`{"\u0069d":"x"}`, `{"id":"a\nb"}`, `{"data":[{"url":"/v1/images/\u0061/content"}]}`} {
		if _, _, ok := wrapIDsScanned([]byte(s), func(string) (string, bool) { return "W", true }); ok {
			t.Errorf("the scanner took %s", s)
		}
	}
}

func FuzzScanMatchesDecode(f *testing.F) {
	for _, s := range idSamples {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) { checkScanAgainstDecode(t, body) })
}

func BenchmarkWrapIDs(b *testing.B) {
	signer := jobid.NewSigner([]byte(testSecret))
	body := []byte(`{"created":1764300000,"data":[{"url":"/v1/images/img_8f3a/content?variant=0","revised_prompt":"a red fox in snow"},{"url":"/v1/images/img_8f3a/content?variant=1","revised_prompt":"a red fox in snow"}],"id":"img_8f3a","model":"black-forest-labs/FLUX.1-dev","output_format":"png","size":"1024x1024"}`)
	wrap := func(id string) (string, bool) { return signer.Wrap(id, "k1"), true }
	b.Run("scan", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			wrapIDsScanned(body, wrap)
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			wrapIDsDecoded(body, wrap)
		}
	})
}

// checkRequestScan: wherever the scanner reads a body, it reads what
// encoding/json reads.
func checkRequestScan(t *testing.T, body []byte) {
	fast, ok := scanRequest(body)
	if !ok {
		return
	}
	var slow generationRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&slow); err != nil {
		t.Fatalf("the scanner read %q, which does not decode: %v", body, err)
	}
	if fast != slow {
		t.Fatalf("%q:\nscan   %+v\ndecode %+v", body, fast, slow)
	}
}

var requestSamples = []string{
	`{"prompt":"a red fox","model":"flux","n":2,"num_inference_steps":10,"size":"512x512"}`,
	`{"prompt":"p","model":"wan","num_inference_steps":4,"width":1024,"height":512,"num_frames":81,"response_format":"b64_json"}`,
	` {"n":1,"n":3,"model":null,"extra":{"n":9,"model":"inner"},"list":[1,{"size":"1x1"}]} `,
	`{"Model":"folded"}`,
	`{"model":"esc\"aped"}`,
	`{"n":"4"}`,
	`{"n":true}`,
	`{"model":1}`,
	`{"n":1e3,"width":-5,"height":1.5}`,
	`{"\u006dodel":"escaped key"}`,
	`{"ſize":"long s"}`,
	`[{"model":"x"}]`,
	`null`,
	`{"model":"x"} trailing`,
}

func TestRequestScanMatchesDecode(t *testing.T) {
	for _, s := range requestSamples {
		checkRequestScan(t, []byte(s))
	}
	if req, ok := scanRequest([]byte(requestSamples[0])); !ok || req.Model != "flux" || req.N != "2" || req.Size != "512x512" {
		t.Fatalf("scanRequest = %+v, %v", req, ok)
	}
	for _, s := range []string{`{"Model":"folded"}`, `{"model":"esc\"aped"}`, `{"n":"4"}`, `{"ſize":"x"}`, `null`} {
		if _, ok := scanRequest([]byte(s)); ok {
			t.Errorf("the scanner read %s", s)
		}
	}
}

func FuzzRequestScanMatchesDecode(f *testing.F) {
	for _, s := range requestSamples {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) { checkRequestScan(t, body) })
}
