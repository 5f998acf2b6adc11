package otelrpc

import (
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// Option configures an Interceptor.
type Option interface{ apply(*config) }

type config struct {
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
	propagator     propagation.TextMapPropagator
	filter         func(*rpc.Call) bool
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// WithTracerProvider sets where spans go. Default: the global provider,
// otel.GetTracerProvider(), including one set globally after NewInterceptor.
func WithTracerProvider(provider trace.TracerProvider) Option {
	return optionFunc(func(c *config) {
		if provider != nil {
			c.tracerProvider = provider
		}
	})
}

// WithMeterProvider sets where metrics go. Default: the global provider,
// otel.GetMeterProvider(), including one set globally after NewInterceptor.
func WithMeterProvider(provider metric.MeterProvider) Option {
	return optionFunc(func(c *config) {
		if provider != nil {
			c.meterProvider = provider
		}
	})
}

// WithPropagator sets how the trace context travels in the request's user
// properties. Default: W3C trace context and W3C baggage (the traceparent,
// tracestate and baggage properties of the protocol), whatever the global
// propagator is, so that traces cross the broker without further setup.
// Pass otel.GetTextMapPropagator() to use the global one.
func WithPropagator(propagator propagation.TextMapPropagator) Option {
	return optionFunc(func(c *config) {
		if propagator != nil {
			c.propagator = propagator
		}
	})
}

// WithFilter instruments only the calls for which filter returns true; the
// others get no span, no metrics and, on the client, no trace context. The
// filter runs concurrently, before the call is sent: on the client side
// Call.Topic is still empty. Default: every call.
func WithFilter(filter func(call *rpc.Call) bool) Option {
	return optionFunc(func(c *config) { c.filter = filter })
}
