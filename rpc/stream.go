package rpc

// The user's view of streams, in grpc-go's shape (stream_interfaces.go
// there): a ClientStream and a ServerStream of untyped messages, the
// generic types that generated code returns and handlers receive, and
// Stub.NewStream, which opens a stream through the client's interceptors.

import (
	"context"
	"errors"
	"io"
	"iter"
)

// StreamDesc describes one streaming method of a service. Generated code
// declares them in ServiceDesc.Streams.
type StreamDesc struct {
	// StreamName is the method's name, e.g. "WatchReadings".
	StreamName string
	// TopicTemplate is the request topic template; "" means
	// DefaultTopicTemplate.
	TopicTemplate string
	// QoS is the QoS of every message of the stream (0, 1 or 2); a call
	// may override it with WithQoS.
	QoS QoS
	// ServerStreams and ClientStreams say which sides send many messages:
	// server streaming, client streaming, or both (bidirectional).
	ServerStreams, ClientStreams bool
	// Handler serves one stream on srv, the registered implementation.
	Handler func(srv any, stream ServerStream) error
}

// ClientStream is the caller's side of a stream, with untyped messages
// (the codec's message types). Generated code wraps it in
// GenericClientStream. One goroutine may send while another receives.
type ClientStream interface {
	// Context returns the context the stream was opened with.
	Context() context.Context
	// Header returns the response headers: the metadata of the server's
	// first message. It waits for that message, or for the end of the
	// stream, whose error it returns.
	Header() (Metadata, error)
	// Trailer returns the metadata of the server's final message, once
	// RecvMsg has returned an error (io.EOF included).
	Trailer() Metadata
	// CloseSend half-closes the stream: the server's Recv returns io.EOF
	// after the messages sent before.
	CloseSend() error
	// SendMsg sends one message; it blocks while the server has granted
	// no credit for it (flow control).
	SendMsg(m any) error
	// RecvMsg decodes the next message into m. At the end of the stream
	// it returns io.EOF if the server ended with OK, else an *Error.
	RecvMsg(m any) error
	// CloseReceive ends the stream from the caller's side: a stream still
	// open is cancelled on the wire (the server's handler sees
	// context.Canceled). Cancelling the stream's context does the same.
	CloseReceive() error
}

// ServerStream is the server's side of a stream, with untyped messages.
// Generated code wraps it in GenericServerStream.
type ServerStream interface {
	// Context returns the handler's context: the stream's deadline, its
	// *Call (CallFromContext), cancelled when the caller cancels.
	Context() context.Context
	// SetHeader adds md to the response headers, sent with the first
	// message (or the final one); after that it has no effect.
	SetHeader(md Metadata)
	// SetTrailer adds md to the trailers, sent with the final message.
	SetTrailer(md Metadata)
	// SendMsg sends one message; it blocks while the caller has granted
	// no credit for it (flow control).
	SendMsg(m any) error
	// RecvMsg decodes the next message from the caller into m; after the
	// caller half-closed it returns io.EOF.
	RecvMsg(m any) error
}

// ServerStreamingClient is the caller's side of a server-streaming
// method: Recv until io.EOF (an OK end) or an *Error.
type ServerStreamingClient[Res any] interface {
	// Recv returns the next message; io.EOF when the stream ended OK.
	Recv() (*Res, error)
	ClientStream
}

// ServerStreamingServer is the handler's side of a server-streaming
// method.
type ServerStreamingServer[Res any] interface {
	// Send sends one message to the caller.
	Send(*Res) error
	ServerStream
}

// ClientStreamingClient is the caller's side of a client-streaming
// method: Send, then CloseAndRecv for the one response.
type ClientStreamingClient[Req any, Res any] interface {
	// Send sends one message to the server.
	Send(*Req) error
	// CloseAndRecv half-closes the stream and returns the server's
	// response, or its error.
	CloseAndRecv() (*Res, error)
	ClientStream
}

// ClientStreamingServer is the handler's side of a client-streaming
// method: Recv until io.EOF, then SendAndClose.
type ClientStreamingServer[Req any, Res any] interface {
	// Recv returns the next message; io.EOF after the caller half-closed.
	Recv() (*Req, error)
	// SendAndClose sends the response; the handler then returns nil.
	SendAndClose(*Res) error
	ServerStream
}

// BidiStreamingClient is the caller's side of a bidirectional method.
type BidiStreamingClient[Req any, Res any] interface {
	// Send sends one message to the server.
	Send(*Req) error
	// Recv returns the next message; io.EOF when the stream ended OK.
	Recv() (*Res, error)
	ClientStream
}

// BidiStreamingServer is the handler's side of a bidirectional method.
type BidiStreamingServer[Req any, Res any] interface {
	// Recv returns the next message; io.EOF after the caller half-closed.
	Recv() (*Req, error)
	// Send sends one message to the caller.
	Send(*Res) error
	ServerStream
}

// GenericClientStream implements the client stream types over a
// ClientStream; generated code returns one.
type GenericClientStream[Req any, Res any] struct {
	ClientStream
}

var (
	_ ServerStreamingClient[string]      = (*GenericClientStream[int, string])(nil)
	_ ClientStreamingClient[int, string] = (*GenericClientStream[int, string])(nil)
	_ BidiStreamingClient[int, string]   = (*GenericClientStream[int, string])(nil)
)

// Send sends m.
func (x *GenericClientStream[Req, Res]) Send(m *Req) error { return x.ClientStream.SendMsg(m) }

// Recv receives the next message.
func (x *GenericClientStream[Req, Res]) Recv() (*Res, error) {
	m := new(Res)
	if err := x.ClientStream.RecvMsg(m); err != nil {
		return nil, err
	}
	return m, nil
}

// CloseAndRecv half-closes the stream and returns the one response: the
// server must send exactly one message and end with OK.
func (x *GenericClientStream[Req, Res]) CloseAndRecv() (*Res, error) {
	if err := x.ClientStream.CloseSend(); err != nil {
		return nil, err
	}
	m := new(Res)
	if err := x.ClientStream.RecvMsg(m); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, Errorf(Internal, "the server ended the stream with OK but sent no response")
		}
		return nil, err
	}
	switch err := x.ClientStream.RecvMsg(new(Res)); {
	case errors.Is(err, io.EOF):
		return m, nil
	case err == nil:
		_ = x.ClientStream.CloseReceive()
		return nil, Errorf(Internal, "the server sent more than one response to a client-streaming call")
	default:
		return nil, err
	}
}

// GenericServerStream implements the server stream types over a
// ServerStream; handlers receive one.
type GenericServerStream[Req any, Res any] struct {
	ServerStream
}

var (
	_ ServerStreamingServer[string]      = (*GenericServerStream[int, string])(nil)
	_ ClientStreamingServer[int, string] = (*GenericServerStream[int, string])(nil)
	_ BidiStreamingServer[int, string]   = (*GenericServerStream[int, string])(nil)
)

// Send sends m.
func (x *GenericServerStream[Req, Res]) Send(m *Res) error { return x.ServerStream.SendMsg(m) }

// SendAndClose sends the response of a client-streaming method; the
// stream ends OK when the handler returns nil.
func (x *GenericServerStream[Req, Res]) SendAndClose(m *Res) error {
	return x.ServerStream.SendMsg(m)
}

// Recv receives the next message.
func (x *GenericServerStream[Req, Res]) Recv() (*Req, error) {
	m := new(Req)
	if err := x.ServerStream.RecvMsg(m); err != nil {
		return nil, err
	}
	return m, nil
}

// Messages returns an iterator over the messages of a stream, for a
// range loop in place of a Recv loop: it yields each message with a nil
// error, and at the end of a stream that did not end OK the *Error with a
// nil message. Breaking out of the loop cancels the stream (CloseReceive),
// as nobody reads it any more.
//
//	for reading, err := range rpc.Messages(stream) {
//		if err != nil { ... }
//	}
func Messages[Res any](stream interface {
	Recv() (*Res, error)
	CloseReceive() error
}) iter.Seq2[*Res, error] {
	return func(yield func(*Res, error) bool) {
		for {
			m, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				yield(nil, err)
				return
			}
			if !yield(m, nil) {
				_ = stream.CloseReceive()
				return
			}
		}
	}
}

// NewStream opens a stream of a streaming method (ServiceDesc.Streams),
// for generated code. A server stream's open is published by its one
// SendMsg (the request); a client or bidi stream's at once. Errors of the
// open come from the first SendMsg or RecvMsg. The stream lives until it
// ends, its context is cancelled or its deadline (the context's, else the
// client's default timeout) passes.
func (s *Stub) NewStream(ctx context.Context, opts ...CallOption) (ClientStream, error) {
	if s.err != nil {
		return nil, s.err
	}
	if s.stream == nil {
		return nil, Errorf(Internal, "method %s of %s is not a streaming method: call Invoke", s.method, s.service)
	}
	cc := s.newCall(opts, "")
	cc.template = s.template
	if cc.target == TargetAll {
		return nil, Errorf(InvalidArgument, "a stream cannot be addressed to _all: it has one server")
	}
	open := StreamingClientFunc(s.client.openStream)
	if len(s.client.interceptors) > 0 {
		open = chainStreamingClient(open, s.client.interceptors)
	}
	conn := open(context.WithValue(context.WithValue(ctx, streamDescKey{}, s.stream), callKey{}, cc))
	return &clientStreamView{ctx: ctx, conn: conn}, nil
}

type streamDescKey struct{}

// clientStreamView is the ClientStream over the conn that the
// interceptors returned.
type clientStreamView struct {
	ctx  context.Context
	conn StreamingClientConn
}

func (v *clientStreamView) Context() context.Context { return v.ctx }
func (v *clientStreamView) Header() (Metadata, error) {
	md := v.conn.ResponseHeader()
	if cs, ok := v.conn.(*clientStream); ok && md == nil {
		return nil, cs.brokenError()
	}
	return md, nil
}
func (v *clientStreamView) Trailer() Metadata   { return v.conn.ResponseTrailer() }
func (v *clientStreamView) CloseSend() error    { return v.conn.CloseSend() }
func (v *clientStreamView) SendMsg(m any) error { return v.conn.Send(m) }
func (v *clientStreamView) RecvMsg(m any) error { return v.conn.Receive(m) }
func (v *clientStreamView) CloseReceive() error { return v.conn.CloseReceive() }
