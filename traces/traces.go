// Package traces is the control plane's side of tracing: spans for its
// registry calls, fleet-wide calls (a child span per worker) and drains,
// exported over OTLP/gRPC to the collector Envoy's spans go to, continuing
// a caller's W3C traceparent. Off (a no-op tracer) without an endpoint.
package traces

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// ServiceName names the control plane's spans' service.
const ServiceName = "diffusion-router-control-plane"

// propagator reads and writes W3C traceparent headers.
var propagator = propagation.TraceContext{}

// Start returns a tracer exporting to the OTLP/gRPC collector at endpoint
// (host:port), sampling that share of new traces (a caller's traceparent
// decides for its own), and the function that flushes and stops it. With
// no endpoint, a no-op tracer: nothing is recorded or sent.
func Start(ctx context.Context, endpoint string, sampling float64) (trace.Tracer, func(context.Context) error, error) {
	if endpoint == "" {
		return noop.NewTracerProvider().Tracer(ServiceName), func(context.Context) error { return nil }, nil
	}
	exp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(endpoint), otlptracegrpc.WithInsecure())
	if err != nil {
		return nil, nil, fmt.Errorf("traces: OTLP exporter for %s: %w", endpoint, err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(sampling))),
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(ServiceName))),
	)
	return tp.Tracer(ServiceName), tp.Shutdown, nil
}

// Handler wraps an HTTP API: each call is a span named by its method and
// path, continuing the caller's traceparent (Envoy passes its own span's
// on for the registry routes of the front port). Paths under skip (the
// filters' own calls, many a second) are not traced.
func Handler(tracer trace.Tracer, next http.Handler, skip string) http.Handler {
	if tracer == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if skip != "" && strings.HasPrefix(r.URL.Path, skip) {
			next.ServeHTTP(w, r)
			return
		}
		ctx := propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := tracer.Start(ctx, "registry "+r.Method+" "+r.URL.Path, trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("http.method", r.Method), attribute.String("http.target", r.URL.Path)))
		defer span.End()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r.WithContext(ctx))
		span.SetAttributes(attribute.Int("http.status_code", sw.status))
		if sw.status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(sw.status))
		}
	})
}

// statusWriter remembers the status an API call answered.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// Flush passes on a streaming answer's flush.
func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Inject writes ctx's trace into an outgoing request's headers, so a
// worker that traces continues it.
func Inject(ctx context.Context, h http.Header) {
	propagator.Inject(ctx, propagation.HeaderCarrier(h))
}

// ID is ctx's trace id for a log line ("" when ctx is not traced).
func ID(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() || !sc.IsSampled() {
		return ""
	}
	return sc.TraceID().String()
}

// Fail marks a span failed with why.
func Fail(span trace.Span, why string) {
	span.SetStatus(codes.Error, why)
}
