package otelrpc_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/rpc/otelrpc"
)

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// wantAttrs fails for every attribute of want that s lacks or has with
// another value.
func wantAttrs(t *testing.T, s sdktrace.ReadOnlySpan, want ...attribute.KeyValue) {
	t.Helper()
	got := attrs(s)
	for _, kv := range want {
		if v, ok := got[kv.Key]; !ok || v != kv.Value {
			t.Errorf("%s span: %s = %q, want %q", s.SpanKind(), kv.Key, v.String(), kv.Value.String())
		}
	}
}

func wantNoAttr(t *testing.T, s sdktrace.ReadOnlySpan, key attribute.Key) {
	t.Helper()
	if v, ok := attrs(s)[key]; ok {
		t.Errorf("%s span: %s = %q, want it absent", s.SpanKind(), key, v.String())
	}
}

// TestTraceCrossesBroker: the caller's trace continues in the server, whose
// span is a child of the client span, through the request's user properties.
func TestTraceCrossesBroker(t *testing.T) {
	eachBroker(t, func(t *testing.T, url string) {
		tel := newTelemetry(t)
		type seen struct {
			span        trace.SpanContext
			traceparent string
			baggage     string
		}
		inHandler := make(chan seen, 1)
		startServer(t, url, func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			call, _ := rpc.CallFromContext(ctx)
			inHandler <- seen{
				span:        trace.SpanContextFromContext(ctx),
				traceparent: call.RequestMetadata().Get("traceparent"),
				baggage:     baggage.FromContext(ctx).Member("tenant").Value(),
			}
			return echoBack(ctx, in)
		}, rpc.WithServerID("dev-1"), rpc.WithInterceptors(tel.interceptor))
		client := newClient(t, url, rpc.WithInterceptors(tel.interceptor))

		tenant, _ := baggage.NewMember("tenant", "acme")
		bag, _ := baggage.New(tenant)
		ctx, parent := sdktrace.NewTracerProvider().Tracer("test").Start(baggage.ContextWithBaggage(testCtx(t), bag), "caller")
		if _, err := echo(ctx, client, "hi", rpc.To("dev-1")); err != nil {
			t.Fatal(err)
		}
		parent.End()
		tel.waitSpans(t, 2)
		clientSpan, serverSpan := tel.span(t, "client"), tel.span(t, "server")
		got := <-inHandler

		if clientSpan.Parent().SpanID() != parent.SpanContext().SpanID() || clientSpan.SpanContext().TraceID() != parent.SpanContext().TraceID() {
			t.Errorf("client span's parent %v, want the caller's span %v", clientSpan.Parent(), parent.SpanContext())
		}
		if serverSpan.SpanContext().TraceID() != clientSpan.SpanContext().TraceID() {
			t.Errorf("server trace ID %s, want the client's %s", serverSpan.SpanContext().TraceID(), clientSpan.SpanContext().TraceID())
		}
		if serverSpan.Parent().SpanID() != clientSpan.SpanContext().SpanID() || !serverSpan.Parent().IsRemote() {
			t.Errorf("server span's parent %v (remote %t), want the client span %s", serverSpan.Parent().SpanID(), serverSpan.Parent().IsRemote(), clientSpan.SpanContext().SpanID())
		}
		if !got.span.Equal(serverSpan.SpanContext()) {
			t.Errorf("handler's context holds span %v, want the server span %v", got.span, serverSpan.SpanContext())
		}
		wantTraceparent := "00-" + clientSpan.SpanContext().TraceID().String() + "-" + clientSpan.SpanContext().SpanID().String() + "-01"
		if got.traceparent != wantTraceparent {
			t.Errorf("traceparent user property %q, want %q", got.traceparent, wantTraceparent)
		}
		if got.baggage != "acme" {
			t.Errorf("baggage tenant = %q in the handler, want acme", got.baggage)
		}

		for _, s := range []sdktrace.ReadOnlySpan{clientSpan, serverSpan} {
			if s.Name() != echoMethod {
				t.Errorf("%s span named %q, want %q", s.SpanKind(), s.Name(), echoMethod)
			}
			wantAttrs(t, s,
				attribute.String("rpc.system.name", "mqttrpc"),
				attribute.String("rpc.method", echoMethod),
				attribute.String("rpc.response.status_code", "OK"),
				attribute.Int64("rpc.mqttrpc.status_code", 0),
				attribute.String("rpc.mqttrpc.target", "dev-1"),
				attribute.String("messaging.system", "mqtt"),
				attribute.String("messaging.destination.name", "mqttrpc/"+echoServiceName+"/dev-1/Echo"),
			)
			wantNoAttr(t, s, "error.type")
			if s.Status().Code != codes.Unset {
				t.Errorf("%s span status %v, want Unset", s.SpanKind(), s.Status())
			}
			if s.InstrumentationScope().Name != "github.com/mqttrpc/mqttrpc/rpc/otelrpc" {
				t.Errorf("scope %q", s.InstrumentationScope().Name)
			}
		}
	})
}

// TestErrorStatus: every failed call fails the client span; the server span
// fails only for the codes that mean the server failed.
func TestErrorStatus(t *testing.T) {
	url := newTestbrokerURL(t)
	cases := []struct {
		name          string
		handlerErr    error
		panics        bool
		code          rpc.Code
		statusName    string
		serverFailed  bool
		clientMessage string
	}{
		{name: "InvalidArgument", handlerErr: rpc.Errorf(rpc.InvalidArgument, "bad value"), code: rpc.InvalidArgument, statusName: "INVALID_ARGUMENT", clientMessage: "bad value"},
		{name: "NotFound", handlerErr: rpc.Errorf(rpc.NotFound, "no such thing"), code: rpc.NotFound, statusName: "NOT_FOUND", clientMessage: "no such thing"},
		{name: "plain error", handlerErr: errors.New("disk on fire"), code: rpc.Unknown, statusName: "UNKNOWN", serverFailed: true, clientMessage: "disk on fire"},
		{name: "Unavailable", handlerErr: rpc.Errorf(rpc.Unavailable, "busy"), code: rpc.Unavailable, statusName: "UNAVAILABLE", serverFailed: true, clientMessage: "busy"},
		{name: "panic", panics: true, code: rpc.Internal, statusName: "INTERNAL", serverFailed: true, clientMessage: "handler panicked"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tel := newTelemetry(t)
			id := uniqueID("dev")
			startServer(t, url, func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
				if tc.panics {
					panic("boom")
				}
				return nil, tc.handlerErr
			}, rpc.WithServerID(id), rpc.WithInterceptors(tel.interceptor), rpc.WithLogger(nil))
			client := newClient(t, url, rpc.WithInterceptors(tel.interceptor))
			_, err := echo(testCtx(t), client, "x", rpc.To(id))
			if rpc.CodeOf(err) != tc.code {
				t.Fatalf("call error %v, want code %v", err, tc.code)
			}
			tel.waitSpans(t, 2)
			clientSpan, serverSpan := tel.span(t, "client"), tel.span(t, "server")
			for _, s := range []sdktrace.ReadOnlySpan{clientSpan, serverSpan} {
				wantAttrs(t, s,
					attribute.String("rpc.response.status_code", tc.statusName),
					attribute.Int64("rpc.mqttrpc.status_code", int64(tc.code)),
				)
			}
			wantAttrs(t, clientSpan, attribute.String("error.type", tc.statusName))
			if st := clientSpan.Status(); st.Code != codes.Error || st.Description != tc.clientMessage {
				t.Errorf("client span status %+v, want Error %q", st, tc.clientMessage)
			}
			if tc.serverFailed {
				wantAttrs(t, serverSpan, attribute.String("error.type", tc.statusName))
				if serverSpan.Status().Code != codes.Error {
					t.Errorf("server span status %+v, want Error", serverSpan.Status())
				}
			} else {
				wantNoAttr(t, serverSpan, "error.type")
				if serverSpan.Status().Code != codes.Unset {
					t.Errorf("server span status %+v, want Unset: %s is the caller's fault", serverSpan.Status(), tc.statusName)
				}
			}
		})
	}
}

// TestForeignTraceparent: an MQTT client that knows nothing of mqttrpc but
// sends a W3C traceparent user property gets its trace continued.
func TestForeignTraceparent(t *testing.T) {
	eachBroker(t, func(t *testing.T, url string) {
		tel := newTelemetry(t)
		startServer(t, url, echoBack, rpc.WithServerID("dev-1"), rpc.WithInterceptors(tel.interceptor))
		clientID := uniqueID("raw")
		responseTopic := "mqttrpc/responses/" + clientID
		raw := newRawClient(t, url, clientID)
		raw.SubscribeTo(t, responseTopic)

		const (
			traceID  = "4bf92f3577b34da6a3ce929d0e0e4736"
			parentID = "00f067aa0ba902b7"
		)
		raw.PublishTo(t, "mqttrpc/"+echoServiceName+"/dev-1/Echo", &paho.PublishProperties{
			ResponseTopic:   responseTopic,
			CorrelationData: []byte("corr-1"),
			ContentType:     "application/json",
			User: paho.UserProperties{
				{Key: "traceparent", Value: "00-" + traceID + "-" + parentID + "-01"},
				{Key: "tracestate", Value: "vendor=opaque"},
			},
		}, `"hello"`)
		p := raw.Next(10 * time.Second)
		if p == nil {
			t.Fatal("no response")
		}
		if userProperty(p, "mqttrpc-status") != "" || string(p.Payload) != `"hello"` {
			t.Fatalf("response status %q payload %q", userProperty(p, "mqttrpc-status"), p.Payload)
		}
		tel.waitSpans(t, 1)
		s := tel.span(t, "server")
		if got := s.SpanContext().TraceID().String(); got != traceID {
			t.Errorf("server span trace ID %s, want the caller's %s", got, traceID)
		}
		if got := s.Parent().SpanID().String(); got != parentID || !s.Parent().IsRemote() {
			t.Errorf("server span parent %s (remote %t), want the caller's span %s", got, s.Parent().IsRemote(), parentID)
		}
		if got := s.SpanContext().TraceState().Get("vendor"); got != "opaque" {
			t.Errorf("tracestate vendor=%q, want the caller's opaque", got)
		}
		if !s.SpanContext().IsSampled() {
			t.Error("server span not sampled, though the caller's flags say sampled")
		}
	})
}

// TestFilter: a filtered-out call has no span and sends no trace context.
func TestFilter(t *testing.T) {
	url := newTestbrokerURL(t)
	tel := newTelemetry(t, otelrpc.WithFilter(func(call *rpc.Call) bool {
		return !strings.HasPrefix(call.RequestMetadata().Get("x-health"), "yes")
	}))
	traceparents := make(chan string, 2)
	startServer(t, url, func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		call, _ := rpc.CallFromContext(ctx)
		traceparents <- call.RequestMetadata().Get("traceparent")
		return echoBack(ctx, in)
	}, rpc.WithServerID("dev-1"), rpc.WithInterceptors(tel.interceptor))
	client := newClient(t, url, rpc.WithInterceptors(tel.interceptor))
	if _, err := echo(testCtx(t), client, "x", rpc.To("dev-1"), rpc.WithMetadata(rpc.Metadata{"x-health": {"yes"}})); err != nil {
		t.Fatal(err)
	}
	if tp := <-traceparents; tp != "" {
		t.Errorf("filtered call sent traceparent %q", tp)
	}
	if _, err := echo(testCtx(t), client, "x", rpc.To("dev-1")); err != nil {
		t.Fatal(err)
	}
	if tp := <-traceparents; tp == "" {
		t.Error("unfiltered call sent no traceparent")
	}
	tel.waitSpans(t, 2)
	time.Sleep(50 * time.Millisecond) // a span of the filtered call would have ended by now
	if n := len(tel.spans.Ended()); n != 2 {
		t.Errorf("%d spans, want 2 (only the unfiltered call's): %v", n, spanNames(tel.spans.Ended()))
	}
}
