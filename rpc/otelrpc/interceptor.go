package otelrpc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// instrumentationName names the tracer and meter.
const instrumentationName = "github.com/mqttrpc/mqttrpc/rpc/otelrpc"

// Interceptor is an rpc.Interceptor that traces and measures calls: a
// span per unary call and per stream (with an event per message), the
// call duration and the calls in flight.
// Give the same Interceptor to clients and servers (rpc.WithInterceptors);
// it tells the sides apart by rpc.Call.IsClient. It is safe for concurrent
// use.
type Interceptor struct {
	tracer     trace.Tracer
	propagator propagation.TextMapPropagator
	filter     func(*rpc.Call) bool
	client     instruments
	server     instruments
	dropped    dropCounter
	methods    sync.Map // methodKey -> *methodAttributes
}

var _ rpc.Interceptor = (*Interceptor)(nil)

// NewInterceptor returns an Interceptor configured by opts. It fails only
// when the MeterProvider refuses to create the instruments.
func NewInterceptor(opts ...Option) (*Interceptor, error) {
	cfg := config{
		tracerProvider: otel.GetTracerProvider(),
		meterProvider:  otel.GetMeterProvider(),
		propagator:     propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
	}
	for _, o := range opts {
		o.apply(&cfg)
	}
	meter := cfg.meterProvider.Meter(instrumentationName,
		metric.WithInstrumentationVersion(rpc.Version), metric.WithSchemaURL(semconv.SchemaURL))
	client, server, dropped, err := newInstruments(meter)
	if err != nil {
		return nil, fmt.Errorf("otelrpc: creating metric instruments: %w", err)
	}
	return &Interceptor{
		tracer: cfg.tracerProvider.Tracer(instrumentationName,
			trace.WithInstrumentationVersion(rpc.Version), trace.WithSchemaURL(semconv.SchemaURL)),
		propagator: cfg.propagator,
		filter:     cfg.filter,
		client:     client,
		server:     server,
		dropped:    dropCounter{counter: dropped},
	}, nil
}

// DropHook returns a function for rpc.WithDropHook that counts the requests
// a server drops or rejects in the mqttrpc.server.dropped_requests counter,
// by reason. The request topic is not recorded: it names devices, too many
// values for a metric attribute.
func (i *Interceptor) DropHook() func(reason rpc.DropReason, topic string) {
	return i.dropped.count
}

// WrapUnary implements rpc.Interceptor.
func (i *Interceptor) WrapUnary(next rpc.UnaryFunc) rpc.UnaryFunc {
	return func(ctx context.Context, req any) (any, error) {
		call, ok := rpc.CallFromContext(ctx)
		if !ok || i.filter != nil && !i.filter(call) {
			return next(ctx, req)
		}
		m := i.methodAttributes(call)
		side := &i.server
		if call.IsClient() {
			side = &i.client
		} else if !trace.SpanContextFromContext(ctx).IsValid() {
			// A server interceptor before this one may have extracted
			// the context already.
			ctx = i.propagator.Extract(ctx, MetadataCarrier(call.RequestMetadata()))
		}
		start := time.Now()
		ctx, span := i.tracer.Start(ctx, m.name, m.spanStart...)
		if call.IsClient() {
			i.propagator.Inject(ctx, MetadataCarrier(call.RequestMetadata()))
		}
		// Background: exemplars of an in-flight count would be noise, and
		// offering them costs a context lookup per call.
		side.active.Add(context.Background(), 1, m.active...)
		finished := false
		defer func() {
			if !finished { // a panic: the server answers Internal
				i.end(ctx, span, side, m, call, start, errPanic)
			}
		}()
		resp, err := next(ctx, req)
		finished = true
		i.end(ctx, span, side, m, call, start, err)
		return resp, err
	}
}

// errPanic stands for the answer to a handler that panicked.
var errPanic = rpc.Errorf(rpc.Internal, "handler panicked")

// end completes the span and records the call's metrics.
func (i *Interceptor) end(ctx context.Context, span trace.Span, side *instruments, m *methodAttributes, call *rpc.Call, start time.Time, err error) {
	seconds := time.Since(start).Seconds()
	c := m.forCode(rpc.CodeOf(err), call.IsClient())
	if span.IsRecording() {
		// The topic is known only now on the client: it is rendered
		// when the request is sent.
		attrs := make([]attribute.KeyValue, 0, 2+len(c.span))
		attrs = append(attrs, semconv.MessagingDestinationName(call.Topic()), TargetKey.String(call.Target()))
		span.SetAttributes(append(attrs, c.span...)...)
		if c.failed {
			span.SetStatus(codes.Error, errorMessage(err))
		}
	}
	span.End()
	side.duration.Record(ctx, seconds, c.record...)
	side.active.Add(context.Background(), -1, m.active...)
}

// methodAttributes returns the shared attributes of the call's method and
// side, made on the method's first call.
func (i *Interceptor) methodAttributes(call *rpc.Call) *methodAttributes {
	key := methodKey{isClient: call.IsClient(), service: call.Service(), method: call.Method()}
	if m, ok := i.methods.Load(key); ok {
		return m.(*methodAttributes)
	}
	m, _ := i.methods.LoadOrStore(key, newMethodAttributes(key))
	return m.(*methodAttributes)
}

// errorMessage is the message of err without its code, which the span's
// attributes carry.
func errorMessage(err error) string {
	if rpcErr := new(rpc.Error); errors.As(err, &rpcErr) {
		return rpcErr.Message()
	}
	return err.Error()
}
