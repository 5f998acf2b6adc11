// Command tracing is the thermostat example with OpenTelemetry. A caller and
// a thermostat device, each with its own TracerProvider and the otelrpc
// interceptor, talk through an embedded MQTT 5 broker (or -broker); every
// span is printed as JSON on stdout when the program ends.
//
// The caller's CLIENT spans and the device's SERVER spans share one trace
// ID, and each SERVER span's parent is the CLIENT span of its call: the
// trace context crossed the broker in the request's traceparent user
// property.
//
//	go run ./examples/tracing
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/mqttrpc/mqttrpc/examples/internal/exampleconn"
	"github.com/mqttrpc/mqttrpc/examples/thermostat/thermostatv1"
	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/rpc/otelrpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

func main() {
	brokerURL := flag.String("broker", "", "broker URL such as mqtt://127.0.0.1:1883 (default: start an embedded broker)")
	flag.Parse()
	if err := run(*brokerURL, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "tracing:", err)
		os.Exit(1)
	}
}

func run(brokerURL string, out io.Writer) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if brokerURL == "" {
		broker, err := testbroker.New()
		if err != nil {
			return err
		}
		defer broker.Close()
		brokerURL = broker.URL()
	}

	// Two programs in one: each has its own TracerProvider, named by its
	// resource, and exports its spans as JSON when it shuts down. The
	// deferred shutdowns run last, after the connections are closed.
	out = &lockedWriter{w: out}
	deviceTracing, err := newTracerProvider("thermostat-device", out)
	if err != nil {
		return err
	}
	defer shutdown(deviceTracing, &err)
	callerTracing, err := newTracerProvider("thermostat-caller", out)
	if err != nil {
		return err
	}
	defer shutdown(callerTracing, &err)

	// The device: the interceptor traces every call it serves, continuing
	// the caller's trace, and counts the requests it drops.
	deviceOtel, err := otelrpc.NewInterceptor(otelrpc.WithTracerProvider(deviceTracing))
	if err != nil {
		return err
	}
	deviceConn, err := rpc.Dial(ctx, brokerURL, exampleconn.Options(brokerURL, exampleconn.ClientID("dev-1"))...)
	if err != nil {
		return err
	}
	defer deviceConn.Close(context.Background())
	device := rpc.NewServer(deviceConn,
		rpc.WithServerID("dev-1"),
		rpc.WithInterceptors(deviceOtel),
		rpc.WithDropHook(deviceOtel.DropHook()),
	)
	thermostatv1.RegisterThermostatServer(device, &thermostat{id: "dev-1", target: 20})
	if err := device.Start(ctx); err != nil {
		return err
	}
	defer device.Shutdown(context.Background())

	// The caller: the interceptor starts a CLIENT span per call and sends
	// its context along in the request.
	callerOtel, err := otelrpc.NewInterceptor(otelrpc.WithTracerProvider(callerTracing))
	if err != nil {
		return err
	}
	callerConn, err := rpc.Dial(ctx, brokerURL, exampleconn.Options(brokerURL, exampleconn.ClientID("thermostat-caller"))...)
	if err != nil {
		return err
	}
	defer callerConn.Close(context.Background())
	client := rpc.NewClient(callerConn, rpc.WithInterceptors(callerOtel))
	defer client.Close(context.Background())
	thermostats := thermostatv1.NewThermostatClient(client)

	// One operation of the caller's own, three calls under it.
	ctx, operation := callerTracing.Tracer("examples/tracing").Start(ctx, "adjust thermostat")
	defer operation.End()
	if _, err := thermostats.GetReading(ctx, &thermostatv1.GetReadingRequest{}, rpc.To("dev-1")); err != nil {
		return err
	}
	if _, err := thermostats.SetTarget(ctx, &thermostatv1.SetTargetRequest{Celsius: 21.5}, rpc.To("dev-1")); err != nil {
		return err
	}
	// Refused by the device: the CLIENT span fails with INVALID_ARGUMENT;
	// the SERVER span doesn't, the caller was at fault.
	if _, err := thermostats.SetTarget(ctx, &thermostatv1.SetTargetRequest{Celsius: 80}, rpc.To("dev-1")); rpc.CodeOf(err) != rpc.InvalidArgument {
		return fmt.Errorf("SetTarget(80): got %v, want InvalidArgument", err)
	}
	return nil
}

// newTracerProvider returns a provider that samples every span and writes
// them as indented JSON to out in batches, the last one at Shutdown.
func newTracerProvider(serviceName string, out io.Writer) (*sdktrace.TracerProvider, error) {
	exporter, err := stdouttrace.New(stdouttrace.WithWriter(out), stdouttrace.WithPrettyPrint())
	if err != nil {
		return nil, err
	}
	res := resource.NewWithAttributes(semconv.SchemaURL, semconv.ServiceName(serviceName))
	return sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exporter),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.AlwaysSample()),
	), nil
}

// shutdown flushes the provider's spans and stops it, reporting its error
// unless run already failed.
func shutdown(tp *sdktrace.TracerProvider, err *error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	*err = errors.Join(*err, tp.Shutdown(ctx))
}

// lockedWriter lets the two exporters share out.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// thermostat is a simulated device.
type thermostat struct {
	thermostatv1.UnimplementedThermostatServer

	id     string
	mu     sync.Mutex
	target float64
}

// GetReading implements thermostatv1.ThermostatServer.
func (t *thermostat) GetReading(ctx context.Context, _ *thermostatv1.GetReadingRequest) (*thermostatv1.Reading, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return &thermostatv1.Reading{DeviceId: t.id, Celsius: 19.5, Humidity: 41, TargetCelsius: t.target}, nil
}

// SetTarget implements thermostatv1.ThermostatServer. The handler's context
// holds the SERVER span: it records an event on it.
func (t *thermostat) SetTarget(ctx context.Context, req *thermostatv1.SetTargetRequest) (*thermostatv1.SetTargetResponse, error) {
	c := req.GetCelsius()
	if !(c >= 5 && c <= 35) {
		return nil, rpc.Errorf(rpc.InvalidArgument, "target %.1f °C is outside [5, 35] °C", c)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	previous := t.target
	t.target = c
	trace.SpanFromContext(ctx).AddEvent("target changed", trace.WithAttributes(
		attribute.Float64("thermostat.previous_celsius", previous),
		attribute.Float64("thermostat.target_celsius", c),
	))
	return &thermostatv1.SetTargetResponse{PreviousCelsius: previous}, nil
}
