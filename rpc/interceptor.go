package rpc

import "context"

// UnaryFunc is one step of a unary call: on the client it sends req and
// returns the response; on the server it runs the handler. The *Call being
// made or served is in the context (CallFromContext).
type UnaryFunc func(ctx context.Context, req any) (any, error)

// StreamingClientFunc is one step of opening a streaming call on the
// client: it returns the stream the caller sends on and receives from.
// The *Call is in the context.
type StreamingClientFunc func(ctx context.Context) StreamingClientConn

// StreamingHandlerFunc is one step of serving a streaming call on the
// server: it runs the handler over the stream. The *Call is in the
// context.
type StreamingHandlerFunc func(ctx context.Context, stream StreamingHandlerConn) error

// StreamingClientConn is the caller's side of a streaming call, as an
// interceptor sees it: messages are untyped (the codec's message types),
// and an interceptor may wrap it to watch or change every message.
type StreamingClientConn interface {
	// Call describes the call.
	Call() *Call
	// Send sends one request message.
	Send(msg any) error
	// CloseSend half-closes the stream: the server receives no more.
	CloseSend() error
	// Receive decodes the next response message into msg; at the end of
	// the stream it returns io.EOF, or the *Error the stream ended with.
	Receive(msg any) error
	// ResponseHeader returns the metadata of the server's first message;
	// it waits for that message or the end of the stream.
	ResponseHeader() Metadata
	// ResponseTrailer returns the metadata of the server's final message,
	// once Receive has returned an error (io.EOF included).
	ResponseTrailer() Metadata
	// CloseReceive ends the stream from the caller's side (cancelling it
	// on the wire if it is still open).
	CloseReceive() error
}

// StreamingHandlerConn is the server's side of a streaming call, as an
// interceptor sees it.
type StreamingHandlerConn interface {
	// Call describes the call; its ResponseMetadata is sent with the first
	// message (headers).
	Call() *Call
	// Receive decodes the next request message into msg; after the client
	// half-closed it returns io.EOF.
	Receive(msg any) error
	// Send sends one response message.
	Send(msg any) error
	// ResponseTrailer is metadata sent with the stream's final status.
	ResponseTrailer() Metadata
}

// Interceptor wraps calls, on clients (WithInterceptors as a ClientOption)
// and servers (WithInterceptors as a ServerOption): logging,
// authentication and tracing are interceptors. Its shape is connect-go's:
// one method for unary calls, on either side, and one for each side of
// streaming calls. An interceptor with nothing to do for a kind of call
// returns next unchanged; UnaryInterceptorFunc does so for streams.
//
// The functions an interceptor returns may run for many calls,
// concurrently: a client or server wraps its interceptors once (a client's
// broadcasts wrap them per broadcast). They pass next a context derived
// from the one they were given (context.WithValue, WithTimeout and the
// like), which carries the call: on a client's unary call, next fails with
// Internal otherwise.
//
// Streaming calls (docs/protocol.md, "Streams") go through
// WrapStreamingClient when a stream is opened (Stub.NewStream) and
// WrapStreamingHandler when a server runs its handler; the stream's
// messages pass through the StreamingClientConn and StreamingHandlerConn
// that the wrapped functions return and receive.
type Interceptor interface {
	WrapUnary(next UnaryFunc) UnaryFunc
	WrapStreamingClient(next StreamingClientFunc) StreamingClientFunc
	WrapStreamingHandler(next StreamingHandlerFunc) StreamingHandlerFunc
}

// UnaryInterceptorFunc adapts a function to an Interceptor of unary calls:
// streaming calls pass through it unchanged.
type UnaryInterceptorFunc func(next UnaryFunc) UnaryFunc

// WrapUnary implements Interceptor.
func (f UnaryInterceptorFunc) WrapUnary(next UnaryFunc) UnaryFunc { return f(next) }

// WrapStreamingClient implements Interceptor: it returns next.
func (f UnaryInterceptorFunc) WrapStreamingClient(next StreamingClientFunc) StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements Interceptor: it returns next.
func (f UnaryInterceptorFunc) WrapStreamingHandler(next StreamingHandlerFunc) StreamingHandlerFunc {
	return next
}

// chainInterceptors wraps next so that interceptors[0] runs first.
func chainInterceptors(next UnaryFunc, interceptors []Interceptor) UnaryFunc {
	for i := len(interceptors) - 1; i >= 0; i-- {
		next = interceptors[i].WrapUnary(next)
	}
	return next
}

// chainStreamingClient wraps next so that interceptors[0] runs first.
func chainStreamingClient(next StreamingClientFunc, interceptors []Interceptor) StreamingClientFunc {
	for i := len(interceptors) - 1; i >= 0; i-- {
		next = interceptors[i].WrapStreamingClient(next)
	}
	return next
}

// chainStreamingHandler wraps next so that interceptors[0] runs first.
func chainStreamingHandler(next StreamingHandlerFunc, interceptors []Interceptor) StreamingHandlerFunc {
	for i := len(interceptors) - 1; i >= 0; i-- {
		next = interceptors[i].WrapStreamingHandler(next)
	}
	return next
}
