package traces

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func TestHandlerContinuesTheCallersTrace(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tracer := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)).Tracer("test")
	var seen string
	h := Handler(tracer, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = ID(r.Context())
		out := http.Header{}
		Inject(r.Context(), out)
		w.Header().Set("x-next", out.Get("traceparent"))
		w.WriteHeader(http.StatusServiceUnavailable)
	}), "/_router/")
	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	cases := []struct {
		name, path, traceparent string
		spans                   int
		wantTrace               string
	}{
		{"a caller's trace", "/add_worker", "00-" + trace + "-00f067aa0ba902b7-01", 1, trace},
		{"a new trace", "/workers", "", 1, ""},
		{"a filter's call", "/_router/filter-sync", "00-" + trace + "-00f067aa0ba902b7-01", 0, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(rec.Ended())
			req := httptest.NewRequest(http.MethodPost, tc.path, nil)
			if tc.traceparent != "" {
				req.Header.Set("traceparent", tc.traceparent)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			ended := rec.Ended()[before:]
			if len(ended) != tc.spans {
				t.Fatalf("%d spans, want %d", len(ended), tc.spans)
			}
			if tc.spans == 0 {
				if seen != "" {
					t.Fatalf("an untraced call has trace id %q", seen)
				}
				return
			}
			s := ended[0]
			if tc.wantTrace != "" && s.SpanContext().TraceID().String() != tc.wantTrace {
				t.Fatalf("span of trace %s, want the caller's %s", s.SpanContext().TraceID(), tc.wantTrace)
			}
			if seen != s.SpanContext().TraceID().String() {
				t.Fatalf("the handler's trace id %q is not its span's %s", seen, s.SpanContext().TraceID())
			}
			if got := w.Header().Get("x-next"); len(got) != 55 || got[3:35] != seen {
				t.Fatalf("traceparent passed on %q", got)
			}
			if s.Status().Code.String() != "Error" {
				t.Fatalf("a 503 answer's span status %v", s.Status())
			}
		})
	}
}

func TestStartWithoutEndpointIsANoop(t *testing.T) {
	tracer, stop, err := Start(context.Background(), "", 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, span := tracer.Start(context.Background(), "x")
	span.End()
	if ID(ctx) != "" || span.IsRecording() {
		t.Fatal("a no-op tracer recorded a span")
	}
	if err := stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}
