// Package otelrpc adds OpenTelemetry traces and metrics to mqttrpc clients
// and servers, as an rpc.Interceptor.
//
// One Interceptor serves both sides: on a Client it starts a CLIENT span and
// injects the W3C trace context into the request's user properties
// (traceparent, tracestate, baggage); on a Server it extracts that context
// from the request and starts a SERVER span under it, so a trace crosses the
// broker. A request from any MQTT client that sends a traceparent user
// property continues its trace in the server.
//
//	otelInterceptor, err := otelrpc.NewInterceptor()
//	if err != nil {
//		return err
//	}
//	client := rpc.NewClient(conn, rpc.WithInterceptors(otelInterceptor))
//	server := rpc.NewServer(conn,
//		rpc.WithServerID("dev-42"),
//		rpc.WithInterceptors(otelInterceptor),
//		rpc.WithDropHook(otelInterceptor.DropHook()),
//	)
//
// By default the interceptor uses the global TracerProvider and
// MeterProvider (otel.GetTracerProvider, otel.GetMeterProvider) and the W3C
// trace context and baggage propagators, which the protocol names.
//
// # Spans
//
// Spans follow the OpenTelemetry RPC semantic conventions (semconv v1.43.0).
// A span is named after the method, "service/method" (for example
// "example.thermostat.v1.Thermostat/SetTarget"), and carries:
//
//   - rpc.system.name = "mqttrpc"
//   - rpc.method = "service/method"
//   - rpc.response.status_code = the code's gRPC name, such as "OK" or "INVALID_ARGUMENT"
//   - rpc.mqttrpc.status_code = the code's number, 0 to 16, as in mqttrpc-status
//   - rpc.mqttrpc.target = the call's target: a server ID, "_any" or "_all"
//   - messaging.system = "mqtt"
//   - messaging.destination.name = the request topic
//   - error.type = the code's gRPC name, when the call failed (see below)
//
// A client span fails (status Error, error.type set) for every code but OK.
// A server span fails only for the codes that mean the server failed, as
// the gRPC conventions say: Unknown, DeadlineExceeded, Unimplemented,
// Internal, Unavailable and DataLoss. An InvalidArgument answer is the
// caller's fault: the caller's span shows it, the server's stays unset.
//
// # Metrics
//
//   - rpc.client.call.duration, rpc.server.call.duration (histograms, seconds),
//     with rpc.system.name, rpc.method, rpc.response.status_code and error.type;
//   - mqttrpc.client.active_calls, mqttrpc.server.active_calls (up-down
//     counters, {call}), with rpc.system.name and rpc.method;
//   - mqttrpc.server.dropped_requests (counter, {request}), with
//     rpc.system.name and rpc.mqttrpc.drop_reason (rpc.DropReason.String:
//     expired, response_topic_policy, duplicate, overload, ...), counted by
//     the hook that DropHook returns.
//
// A server interceptor sees the calls that reach a handler. Requests the
// server drops or answers itself (expired, outside the response-topic
// policy, undecodable, overload) have no span; pass DropHook to
// rpc.WithDropHook to count them.
package otelrpc
