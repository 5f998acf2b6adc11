package otelrpc

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// Streams: one span per stream, from its open to its end, with a
// "message" event per message sent or received (rpc.message.type SENT or
// RECEIVED, rpc.message.id counting from 1 in each direction, as the
// semantic conventions of RPC name them), the trace context carried in
// the open's metadata as for unary calls, the call metrics, and the
// messages counted in mqttrpc.{client,server}.stream_messages.

// Attributes of message events.
var (
	messageTypeSent     = attribute.String("rpc.message.type", "SENT")
	messageTypeReceived = attribute.String("rpc.message.type", "RECEIVED")
)

const messageIDKey = attribute.Key("rpc.message.id")

// streamSpan is the span of one stream and its message counts.
type streamSpan struct {
	i              *Interceptor
	ctx            context.Context
	span           trace.Span
	side           *instruments
	m              *methodAttributes
	call           *rpc.Call
	start          time.Time
	sent, received atomic.Int64
	once           sync.Once
}

// message records one message: counted, and an event on the span.
func (s *streamSpan) message(sent bool) {
	kind, n, opts := messageTypeReceived, &s.received, s.m.received
	if sent {
		kind, n, opts = messageTypeSent, &s.sent, s.m.sent
	}
	s.side.messages.Add(context.Background(), 1, opts...)
	id := n.Add(1)
	if s.span.IsRecording() {
		s.span.AddEvent("message", trace.WithAttributes(kind, messageIDKey.Int64(id)))
	}
}

// finish ends the span once; io.EOF is an OK end.
func (s *streamSpan) finish(err error) {
	if errors.Is(err, io.EOF) {
		err = nil
	}
	s.once.Do(func() { s.i.end(s.ctx, s.span, s.side, s.m, s.call, s.start, err) })
}

// start begins the span of a stream on either side.
func (i *Interceptor) startStream(ctx context.Context, call *rpc.Call) (context.Context, *streamSpan) {
	m := i.methodAttributes(call)
	side := &i.server
	if call.IsClient() {
		side = &i.client
	} else if !trace.SpanContextFromContext(ctx).IsValid() {
		ctx = i.propagator.Extract(ctx, MetadataCarrier(call.RequestMetadata()))
	}
	start := time.Now()
	ctx, span := i.tracer.Start(ctx, m.name, m.spanStart...)
	if call.IsClient() {
		i.propagator.Inject(ctx, MetadataCarrier(call.RequestMetadata()))
	}
	side.active.Add(context.Background(), 1, m.active...)
	return ctx, &streamSpan{i: i, ctx: ctx, span: span, side: side, m: m, call: call, start: start}
}

// WrapStreamingClient implements rpc.Interceptor: a client span per
// stream, ended when Receive returns an error (io.EOF included) or the
// caller closes the stream. A stream that is neither read to its end nor
// closed leaves its span open.
func (i *Interceptor) WrapStreamingClient(next rpc.StreamingClientFunc) rpc.StreamingClientFunc {
	return func(ctx context.Context) rpc.StreamingClientConn {
		call, ok := rpc.CallFromContext(ctx)
		if !ok || i.filter != nil && !i.filter(call) {
			return next(ctx)
		}
		ctx, s := i.startStream(ctx, call)
		return &tracedClientConn{StreamingClientConn: next(ctx), s: s}
	}
}

// WrapStreamingHandler implements rpc.Interceptor: a server span per
// stream, a child of the caller's, ended when the handler returns.
func (i *Interceptor) WrapStreamingHandler(next rpc.StreamingHandlerFunc) rpc.StreamingHandlerFunc {
	return func(ctx context.Context, conn rpc.StreamingHandlerConn) error {
		call, ok := rpc.CallFromContext(ctx)
		if !ok || i.filter != nil && !i.filter(call) {
			return next(ctx, conn)
		}
		ctx, s := i.startStream(ctx, call)
		finished := false
		defer func() {
			if !finished { // a panic: the server answers Internal
				s.finish(errPanic)
			}
		}()
		err := next(ctx, &tracedHandlerConn{StreamingHandlerConn: conn, s: s})
		finished = true
		s.finish(err)
		return err
	}
}

type tracedClientConn struct {
	rpc.StreamingClientConn
	s *streamSpan
}

func (c *tracedClientConn) Send(msg any) error {
	err := c.StreamingClientConn.Send(msg)
	if err == nil {
		c.s.message(true)
	}
	return err
}

func (c *tracedClientConn) Receive(msg any) error {
	err := c.StreamingClientConn.Receive(msg)
	if err != nil {
		c.s.finish(err)
		return err
	}
	c.s.message(false)
	return nil
}

func (c *tracedClientConn) CloseReceive() error {
	err := c.StreamingClientConn.CloseReceive()
	c.s.finish(rpc.Errorf(rpc.Canceled, "stream closed by the caller"))
	return err
}

type tracedHandlerConn struct {
	rpc.StreamingHandlerConn
	s *streamSpan
}

func (c *tracedHandlerConn) Send(msg any) error {
	err := c.StreamingHandlerConn.Send(msg)
	if err == nil {
		c.s.message(true)
	}
	return err
}

func (c *tracedHandlerConn) Receive(msg any) error {
	err := c.StreamingHandlerConn.Receive(msg)
	if err == nil {
		c.s.message(false)
	}
	return err
}
