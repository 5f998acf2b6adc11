package otelrpc_test

import (
	"context"
	"errors"
	"io"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/rpc/otelrpc"
)

// countDesc is a server-streaming service: Count sends 0…n-1.
var countDesc = rpc.ServiceDesc{
	ServiceName: "test.v1.CountService",
	Streams: []rpc.StreamDesc{{
		StreamName:    "Count",
		QoS:           rpc.QoS1,
		ServerStreams: true,
		Handler: func(_ any, stream rpc.ServerStream) error {
			n := new(wrapperspb.Int64Value)
			if err := stream.RecvMsg(n); err != nil {
				return err
			}
			for i := range n.GetValue() {
				if err := stream.SendMsg(wrapperspb.Int64(i)); err != nil {
					return err
				}
			}
			return nil
		},
	}},
}

// messageEvents counts a span's message events by type.
func messageEvents(s sdktrace.ReadOnlySpan) (sent, received int) {
	for _, e := range s.Events() {
		if e.Name != "message" {
			continue
		}
		for _, kv := range e.Attributes {
			if kv.Key == attribute.Key("rpc.message.type") {
				if kv.Value.AsString() == "SENT" {
					sent++
				} else {
					received++
				}
			}
		}
	}
	return sent, received
}

// A stream gets one span on each side, the server's a child of the
// client's, with an event per message.
func TestStreamSpans(t *testing.T) {
	eachBroker(t, func(t *testing.T, url string) {
		tel := newTelemetry(t)
		srv := rpc.NewServer(dial(t, url, uniqueID("server")), rpc.WithServerID("dev-1"), rpc.WithInterceptors(tel.interceptor))
		srv.RegisterService(&countDesc, struct{}{})
		if err := srv.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
		client := newClient(t, url, rpc.WithInterceptors(tel.interceptor))

		cs, err := client.Stub(&countDesc, "Count").NewStream(testCtx(t), rpc.To("dev-1"))
		if err != nil {
			t.Fatal(err)
		}
		if err := cs.SendMsg(wrapperspb.Int64(3)); err != nil {
			t.Fatal(err)
		}
		for {
			err := cs.RecvMsg(new(wrapperspb.Int64Value))
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		tel.waitSpans(t, 2)
		clientSpan, serverSpan := tel.span(t, "client"), tel.span(t, "server")
		if serverSpan.Parent().SpanID() != clientSpan.SpanContext().SpanID() || serverSpan.SpanContext().TraceID() != clientSpan.SpanContext().TraceID() {
			t.Errorf("server span %v is not a child of client span %v", serverSpan.Parent(), clientSpan.SpanContext())
		}
		if sent, received := messageEvents(clientSpan); sent != 1 || received != 3 {
			t.Errorf("client span: %d sent and %d received message events, want 1 and 3", sent, received)
		}
		if sent, received := messageEvents(serverSpan); sent != 3 || received != 1 {
			t.Errorf("server span: %d sent and %d received message events, want 3 and 1", sent, received)
		}
		if clientSpan.Name() != "test.v1.CountService/Count" {
			t.Errorf("client span name %q", clientSpan.Name())
		}
		rm := tel.collect(t)
		for _, c := range []struct {
			name           string
			sent, received int64
		}{
			{otelrpc.ClientStreamMessagesMetric, 1, 3},
			{otelrpc.ServerStreamMessagesMetric, 3, 1},
		} {
			sent, received := streamMessages(t, rm, c.name)
			if sent != c.sent || received != c.received {
				t.Errorf("%s: %d sent, %d received; want %d, %d", c.name, sent, received, c.sent, c.received)
			}
		}
	})
}

// streamMessages sums a stream message counter by rpc.message.type.
func streamMessages(t *testing.T, rm metricdata.ResourceMetrics, name string) (sent, received int64) {
	t.Helper()
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				t.Fatalf("%s is a %T, want a sum", name, m.Data)
			}
			for _, dp := range sum.DataPoints {
				v, _ := dp.Attributes.Value("rpc.message.type")
				if v.AsString() == "SENT" {
					sent += dp.Value
				} else {
					received += dp.Value
				}
			}
		}
	}
	return sent, received
}
