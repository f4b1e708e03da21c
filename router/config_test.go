package router

import (
	"io"
	"slices"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		check   func(t *testing.T, c Config)
		wantErr bool
	}{
		{name: "defaults match the Python routers", args: nil, check: func(t *testing.T, c Config) {
			if c.Host != "0.0.0.0" || c.Port != 30080 || c.RoutingAlgorithm != "least-work" || c.RoutingAlgorithmSet || c.Timeout != 0 ||
				c.MaxConnections != 100 || c.HealthCheckInterval != 10*time.Second || c.HealthCheckFailureThreshold != 3 {
				t.Fatalf("defaults = %+v", c)
			}
			if c.APIHost != "127.0.0.1" || c.AdminHost != "127.0.0.1" || c.APIPort != 0 || c.AdminPort != 0 {
				t.Fatalf("own ports must default to free loopback ports: %+v", c)
			}
		}},
		{name: "space separated worker urls", args: []string{"--worker-urls", "http://a:1", "http://b:2", "--port", "1"}, check: func(t *testing.T, c Config) {
			if !slices.Equal(c.WorkerURLs, []string{"http://a:1", "http://b:2"}) || c.Port != 1 {
				t.Fatalf("urls = %v port %d", c.WorkerURLs, c.Port)
			}
		}},
		{name: "comma separated worker urls", args: []string{"--worker-urls=http://a:1,http://b:2"}, check: func(t *testing.T, c Config) {
			if !slices.Equal(c.WorkerURLs, []string{"http://a:1", "http://b:2"}) {
				t.Fatalf("urls = %v", c.WorkerURLs)
			}
		}},
		{name: "worker urls last", args: []string{"--port", "2", "--worker-urls", "http://a:1"}, check: func(t *testing.T, c Config) {
			if !slices.Equal(c.WorkerURLs, []string{"http://a:1"}) {
				t.Fatalf("urls = %v", c.WorkerURLs)
			}
		}},
		{name: "fractional timeout", args: []string{"--timeout", "2.5"}, check: func(t *testing.T, c Config) {
			if c.Timeout != 2500*time.Millisecond {
				t.Fatalf("timeout = %v", c.Timeout)
			}
		}},
		{name: "timeout none", args: []string{"--timeout", "None"}, check: func(t *testing.T, c Config) {
			if c.Timeout != 0 {
				t.Fatalf("timeout = %v", c.Timeout)
			}
		}},
		{name: "verbose means debug", args: []string{"--verbose"}, check: func(t *testing.T, c Config) {
			if c.LogLevel != "debug" {
				t.Fatalf("level = %q", c.LogLevel)
			}
		}},
		{name: "held jobs through the local Envoy by default", args: []string{"--port", "4000"}, check: func(t *testing.T, c Config) {
			if got := c.HeldEnvoyURL(); got != "http://127.0.0.1:4000" || c.Queue.MaxHeldBytes != 1<<30 {
				t.Fatalf("held envoy %q, max %d", got, c.Queue.MaxHeldBytes)
			}
		}},
		{name: "held jobs on an IPv6 front", args: []string{"--host", "::", "--port", "4000"}, check: func(t *testing.T, c Config) {
			if got := c.HeldEnvoyURL(); got != "http://[::1]:4000" {
				t.Fatalf("held envoy %q", got)
			}
		}},
		{name: "no held jobs without the queue", args: []string{"--queue=false"}, check: func(t *testing.T, c Config) {
			if got := c.HeldEnvoyURL(); got != "" {
				t.Fatalf("held envoy %q", got)
			}
		}},
		{name: "held jobs off", args: []string{"--hold-video-jobs=false"}, check: func(t *testing.T, c Config) {
			if got := c.HeldEnvoyURL(); got != "" {
				t.Fatalf("held envoy %q", got)
			}
		}},
		{name: "held jobs with external Envoys need their address", args: []string{"--external-envoy", "--state-dir", "/tmp/s", "--wasm-filter", "/f.wasm"}, check: func(t *testing.T, c Config) {
			if got := c.HeldEnvoyURL(); got != "" {
				t.Fatalf("held envoy %q", got)
			}
		}},
		{name: "held jobs through a named Envoy", args: []string{"--external-envoy", "--state-dir", "/tmp/s", "--wasm-filter", "/f.wasm", "--held-jobs-envoy", "http://envoy:8080/"}, check: func(t *testing.T, c Config) {
			if got := c.HeldEnvoyURL(); got != "http://envoy:8080" {
				t.Fatalf("held envoy %q", got)
			}
		}},
		{name: "held jobs envoy not a URL", args: []string{"--held-jobs-envoy", "envoy:8080"}, wantErr: true},
		{name: "held bytes zero", args: []string{"--max-held-bytes", "0"}, wantErr: true},
		{name: "bad policy", args: []string{"--routing-algorithm", "fastest"}, wantErr: true},
		{name: "negative overdue factor", args: []string{"--overdue-factor", "-1"}, wantErr: true},
		{name: "overdue defaults", args: nil, check: func(t *testing.T, c Config) {
			if c.OverdueFactor != 4 || c.OverdueFloor != 30*time.Second || c.StallFactor != 10 || c.StallFloor != 5*time.Minute {
				t.Fatalf("overdue defaults %v %v %v %v", c.OverdueFactor, c.OverdueFloor, c.StallFactor, c.StallFloor)
			}
		}},
		{name: "bad client tenant", args: []string{"--client-tenant", "trust"}, wantErr: true},
		{name: "no tenants", args: []string{"--max-tenants", "0"}, wantErr: true},
		{name: "tenants: body untrusted by default", args: nil, check: func(t *testing.T, c Config) {
			if c.Queue.TrustBodyUser || c.Queue.ClientTenant != "honour" || c.Queue.MaxTenants != 256 || c.Queue.TenantIdle != 5*time.Minute {
				t.Fatalf("tenant defaults = %+v", c.Queue)
			}
		}},
		{name: "least-work without the filter", args: []string{"--routing-algorithm", "least-work", "--wasm-filter", "none"}, wantErr: true},
		{name: "default without the filter is least-request", args: []string{"--wasm-filter", "none"}, check: func(t *testing.T, c Config) {
			if c.RoutingAlgorithm != "least-request" {
				t.Fatalf("policy = %q", c.RoutingAlgorithm)
			}
		}},
		{name: "least-work", args: []string{"--routing-algorithm", "least-work"}, check: func(t *testing.T, c Config) {
			if c.RoutingAlgorithm != "least-work" {
				t.Fatalf("policy = %q", c.RoutingAlgorithm)
			}
		}},
		{name: "grant ahead", args: []string{"--queue", "--queue-grant-ahead", "0.05"}, check: func(t *testing.T, c Config) {
			if !c.Queue.On || c.Queue.Ahead != 50*time.Millisecond {
				t.Fatalf("queue %v, ahead %v", c.Queue.On, c.Queue.Ahead)
			}
		}},
		{name: "grant ahead by default", args: []string{"--queue"}, check: func(t *testing.T, c Config) {
			if c.Queue.Ahead != DefaultGrantAhead {
				t.Fatalf("ahead %v", c.Queue.Ahead)
			}
		}},
		{name: "the queue is on with least-work by default", args: nil, check: func(t *testing.T, c Config) {
			if !c.Queue.On {
				t.Fatal("queue off")
			}
		}},
		{name: "early binding one flag away", args: []string{"--queue=false"}, check: func(t *testing.T, c Config) {
			if c.Queue.On {
				t.Fatal("queue on")
			}
		}},
		{name: "no queue with least-request", args: []string{"--routing-algorithm", "least-request"}, check: func(t *testing.T, c Config) {
			if c.Queue.On {
				t.Fatal("queue on")
			}
		}},
		{name: "no queue without the filter", args: []string{"--wasm-filter", "none"}, check: func(t *testing.T, c Config) {
			if c.Queue.On {
				t.Fatal("queue on")
			}
		}},
		{name: "no queue for external Envoys without the filter", args: []string{"--external-envoy", "--state-dir", "/tmp/x"}, check: func(t *testing.T, c Config) {
			if c.Queue.On {
				t.Fatal("queue on")
			}
		}},
		{name: "the queue asked for with least-request", args: []string{"--queue", "--routing-algorithm", "least-request"}, wantErr: true},
		{name: "traces", args: []string{"--otlp-endpoint", "127.0.0.1:4317", "--trace-sampling", "0.5"}, check: func(t *testing.T, c Config) {
			if c.OTLPEndpoint != "127.0.0.1:4317" || c.TraceSampling != 0.5 {
				t.Fatalf("otlp %q sampling %v", c.OTLPEndpoint, c.TraceSampling)
			}
		}},
		{name: "otlp endpoint without a port", args: []string{"--otlp-endpoint", "collector"}, wantErr: true},
		{name: "sampling above 1", args: []string{"--otlp-endpoint", "127.0.0.1:4317", "--trace-sampling", "2"}, wantErr: true},
		{name: "negative grant ahead", args: []string{"--queue-grant-ahead", "-0.1"}, wantErr: true},
		{name: "negative timeout", args: []string{"--timeout", "-1"}, wantErr: true},
		{name: "timeout not a number", args: []string{"--timeout", "soon"}, wantErr: true},
		{name: "zero interval", args: []string{"--health-check-interval", "0"}, wantErr: true},
		{name: "version alone runs nothing else", args: []string{"--max-connections", "0", "--version"}, check: func(t *testing.T, c Config) {
			if !c.ShowVersion {
				t.Fatal("--version not seen")
			}
		}},
		{name: "stop with stdin", args: []string{"--stop-with-stdin"}, check: func(t *testing.T, c Config) {
			if !c.StopWithStdin || c.ShowVersion {
				t.Fatalf("StopWithStdin %v ShowVersion %v", c.StopWithStdin, c.ShowVersion)
			}
		}},
		{name: "the Python router's full command line", args: []string{"--host", "127.0.0.1", "--port", "31000",
			"--worker-urls", "http://a:1", "http://b:2", "--max-connections", "8", "--timeout", "120.5",
			"--health-check-interval", "3600", "--health-check-failure-threshold", "2",
			"--routing-algorithm", "round-robin", "--verbose", "--log-level", "warning"}, check: func(t *testing.T, c Config) {
			if c.Host != "127.0.0.1" || c.Port != 31000 || len(c.WorkerURLs) != 2 || c.MaxConnections != 8 ||
				c.Timeout != 120500*time.Millisecond || c.HealthCheckInterval != time.Hour || c.HealthCheckFailureThreshold != 2 ||
				c.RoutingAlgorithm != "round-robin" || c.LogLevel != "debug" {
				t.Fatalf("parsed %+v", c)
			}
		}},
		{name: "worker urls with no value, as argparse's nargs=*", args: []string{"--worker-urls", "--port", "5"}, check: func(t *testing.T, c Config) {
			if len(c.WorkerURLs) != 0 || c.Port != 5 {
				t.Fatalf("urls %v port %d", c.WorkerURLs, c.Port)
			}
		}},
		{name: "uvicorn's log levels", args: []string{"--log-level", "critical"}, check: func(t *testing.T, c Config) {}},
		{name: "uvicorn's trace", args: []string{"--log-level", "TRACE"}, check: func(t *testing.T, c Config) {}},
		{name: "zero connections", args: []string{"--max-connections", "0"}, wantErr: true},
		{name: "port out of range", args: []string{"--port", "70000"}, wantErr: true},
		{name: "bad log level", args: []string{"--log-level", "loud"}, wantErr: true},
		{name: "stray argument", args: []string{"extra"}, wantErr: true},
		{name: "too many retries", args: []string{"--max-retries", "99"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(tt.args, io.Discard)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("Parse(%v) accepted: %+v", tt.args, c)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%v): %v", tt.args, err)
			}
			tt.check(t, c)
		})
	}
}

func TestParseLogLevel(t *testing.T) {
	tests := []struct {
		in   string
		want logrus.Level
		bad  bool
	}{
		{"trace", logrus.TraceLevel, false},
		{"debug", logrus.DebugLevel, false},
		{"INFO", logrus.InfoLevel, false},
		{"warning", logrus.WarnLevel, false},
		{"warn", logrus.WarnLevel, false},
		{"error", logrus.ErrorLevel, false},
		{"critical", logrus.ErrorLevel, false},
		{"loud", 0, true},
	}
	for _, tt := range tests {
		got, err := parseLogLevel(tt.in)
		if (err != nil) != tt.bad || !tt.bad && got != tt.want {
			t.Errorf("parseLogLevel(%q) = %v, %v; want %v (error %v)", tt.in, got, err, tt.want, tt.bad)
		}
	}
}
