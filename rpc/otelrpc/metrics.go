package otelrpc

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/semconv/v1.43.0/rpcconv"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// Names of the metrics of mqttrpc's own, beside the semantic conventions'
// rpc.client.call.duration and rpc.server.call.duration.
const (
	// ClientActiveCallsMetric counts the calls a client has in flight.
	ClientActiveCallsMetric = "mqttrpc.client.active_calls"
	// ServerActiveCallsMetric counts the calls a server's handlers are running.
	ServerActiveCallsMetric = "mqttrpc.server.active_calls"
	// DroppedRequestsMetric counts the requests servers dropped or rejected
	// instead of executing, by DropReasonKey.
	DroppedRequestsMetric = "mqttrpc.server.dropped_requests"
	// ClientStreamMessagesMetric counts the messages of streams a client
	// sent and received, by rpc.message.type (SENT, RECEIVED).
	ClientStreamMessagesMetric = "mqttrpc.client.stream_messages"
	// ServerStreamMessagesMetric counts the messages of streams a server's
	// handlers sent and received, by rpc.message.type.
	ServerStreamMessagesMetric = "mqttrpc.server.stream_messages"
)

// instruments are one side's metrics.
type instruments struct {
	duration metric.Float64Histogram
	active   metric.Int64UpDownCounter
	messages metric.Int64Counter // stream messages
}

func newInstruments(meter metric.Meter) (client, server instruments, dropped metric.Int64Counter, err error) {
	clientDuration, err := rpcconv.NewClientCallDuration(meter)
	if err != nil {
		return client, server, nil, err
	}
	serverDuration, err := rpcconv.NewServerCallDuration(meter)
	if err != nil {
		return client, server, nil, err
	}
	client.duration, server.duration = clientDuration.Inst(), serverDuration.Inst()
	client.active, err = meter.Int64UpDownCounter(ClientActiveCallsMetric,
		metric.WithDescription("Calls in flight from mqttrpc clients."), metric.WithUnit("{call}"))
	if err != nil {
		return client, server, nil, err
	}
	server.active, err = meter.Int64UpDownCounter(ServerActiveCallsMetric,
		metric.WithDescription("Calls being served by mqttrpc server handlers."), metric.WithUnit("{call}"))
	if err != nil {
		return client, server, nil, err
	}
	client.messages, err = meter.Int64Counter(ClientStreamMessagesMetric,
		metric.WithDescription("Messages of streams sent and received by mqttrpc clients."), metric.WithUnit("{message}"))
	if err != nil {
		return client, server, nil, err
	}
	server.messages, err = meter.Int64Counter(ServerStreamMessagesMetric,
		metric.WithDescription("Messages of streams sent and received by mqttrpc server handlers."), metric.WithUnit("{message}"))
	if err != nil {
		return client, server, nil, err
	}
	dropped, err = meter.Int64Counter(DroppedRequestsMetric,
		metric.WithDescription("Requests an mqttrpc server dropped or rejected instead of executing."), metric.WithUnit("{request}"))
	return client, server, dropped, err
}

// dropCounter counts dropped requests by reason. Its attribute sets are
// made once per reason, so counting allocates nothing.
type dropCounter struct {
	counter metric.Int64Counter
	options sync.Map // rpc.DropReason -> []metric.AddOption
}

// count runs on the MQTT receive goroutine: it must not block, and doesn't
// (the SDK's counters take short locks only).
func (d *dropCounter) count(reason rpc.DropReason, _ string) {
	opts, ok := d.options.Load(reason)
	if !ok {
		opts, _ = d.options.LoadOrStore(reason, []metric.AddOption{metric.WithAttributeSet(
			attribute.NewSet(systemNameAttr, DropReasonKey.String(reason.String())))})
	}
	d.counter.Add(context.Background(), 1, opts.([]metric.AddOption)...)
}
