package translate

import (
	"bytes"
	"encoding/json"
	"flag"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/diffrouter/diffusion-router/registry"
	"github.com/diffrouter/diffusion-router/wire"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ from the current translation")

// goldenInput is the YAML a golden case starts from.
type goldenInput struct {
	Policy     string  `json:"policy"`
	TimeoutSec float64 `json:"timeout_seconds"`
	MaxRetries *uint32 `json:"max_retries"`
	Filter     bool    `json:"wasm_filter"`
	// OTLP is an --otlp-endpoint host:port; Sampling its ratio.
	OTLP     string  `json:"otlp_endpoint"`
	Sampling float64 `json:"trace_sampling"`
	Workers  []struct {
		URL       string   `json:"url"`
		Address   string   `json:"address"`
		State     string   `json:"state"`
		TaskTypes []string `json:"task_types"`
		Model     string   `json:"model"`
		Models    []string `json:"models"`
	} `json:"workers"`
}

// TestGolden translates each testdata/*.in.yaml and compares the Envoy
// resources with testdata/*.out.yaml. Run with -update to regenerate.
func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/*.in.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".in.yaml")
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			var gi goldenInput
			if err := yaml.UnmarshalStrict(raw, &gi); err != nil {
				t.Fatalf("parse %s: %v", in, err)
			}
			o := testOptions()
			if gi.Policy != "" {
				o.Policy = wire.Policy(gi.Policy)
			}
			o.Timeout = time.Duration(gi.TimeoutSec * float64(time.Second))
			if gi.OTLP != "" {
				host, port, err := net.SplitHostPort(gi.OTLP)
				if err != nil {
					t.Fatal(err)
				}
				p, _ := strconv.Atoi(port)
				o.OTLPAddress, o.OTLPPort, o.TraceSampling = host, uint32(p), gi.Sampling
			}
			if gi.Filter {
				o.Filter = &FilterOptions{Path: "/opt/diffusion-router/diffusion-tagger.wasm", Config: `{"secret_env":"DIFFUSION_ROUTER_JOB_SECRET"}`, HostEnvKeys: []string{"DIFFUSION_ROUTER_JOB_SECRET"}}
			}
			if gi.MaxRetries != nil {
				o.MaxRetries = *gi.MaxRetries
			}
			var snap registry.Snapshot
			for _, w := range gi.Workers {
				rw := worker(t, w.URL, w.Address, registry.State(w.State), w.TaskTypes...)
				if w.Model != "" {
					rw.Caps.ModelIDs = []string{w.Model}
				}
				rw.Caps.ModelIDs = append(rw.Caps.ModelIDs, w.Models...)
				snap.Workers = append(snap.Workers, rw)
			}
			res, err := Build(snap, o)
			if err != nil {
				t.Fatal(err)
			}
			got := renderYAML(t, res)
			out := filepath.Join("testdata", name+".out.yaml")
			if *update {
				if err := os.WriteFile(out, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(out)
			if err != nil {
				t.Fatalf("%v (run go test ./xds/translate -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s differs from the translation; if the change is intended, run go test ./xds/translate -update\n--- got ---\n%s", out, got)
			}
		})
	}
}

func renderYAML(t *testing.T, r Resources) []byte {
	t.Helper()
	doc := map[string][]json.RawMessage{}
	add := func(kind string, m proto.Message) {
		b, err := protojson.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		doc[kind] = append(doc[kind], b)
	}
	for _, c := range r.Clusters {
		add("clusters", c)
	}
	for _, e := range r.Endpoints {
		add("endpoints", e)
	}
	for _, l := range r.Listeners {
		add("listeners", l)
	}
	for _, rc := range r.Routes {
		add("routes", rc)
	}
	j, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	y, err := yaml.JSONToYAML(j)
	if err != nil {
		t.Fatal(err)
	}
	return y
}
