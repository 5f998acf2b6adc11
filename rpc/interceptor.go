package rpc

import "context"

// UnaryFunc is one step of a unary call: on the client it sends req and
// returns the response; on the server it runs the handler. The *Call being
// made or served is in the context (CallFromContext).
type UnaryFunc func(ctx context.Context, req any) (any, error)

// Interceptor wraps unary calls, on clients (WithInterceptors as a
// ClientOption) and servers (WithInterceptors as a ServerOption). Logging,
// authentication and tracing are interceptors.
//
// The function WrapUnary returns may run for many calls, concurrently: a
// client or server wraps its interceptors once (a client's broadcasts wrap
// them per broadcast). It passes next a context derived from the one it was
// given (context.WithValue, WithTimeout and the like), which carries the
// call: on a client's unary call, next fails with Internal otherwise.
type Interceptor interface {
	WrapUnary(next UnaryFunc) UnaryFunc
}

// UnaryInterceptorFunc adapts a function to Interceptor.
type UnaryInterceptorFunc func(next UnaryFunc) UnaryFunc

// WrapUnary implements Interceptor.
func (f UnaryInterceptorFunc) WrapUnary(next UnaryFunc) UnaryFunc { return f(next) }

// chainInterceptors wraps next so that interceptors[0] runs first.
func chainInterceptors(next UnaryFunc, interceptors []Interceptor) UnaryFunc {
	for i := len(interceptors) - 1; i >= 0; i-- {
		next = interceptors[i].WrapUnary(next)
	}
	return next
}
