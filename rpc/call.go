package rpc

import "context"

// Call describes one call as seen by an interceptor or a handler: which
// method, on which topic and target, and its metadata. Get it with
// CallFromContext.
type Call struct {
	service     string
	method      string
	idempotency Idempotency
	isClient    bool
	topic       string
	target      string
	tokens      map[string]string
	reqMeta     Metadata
	respMeta    Metadata
	codecName   string
	answeredBy  string // client: the server that answered
}

type callKey struct{}

// CallFromContext returns the call that ctx belongs to, in interceptors and
// handlers. It reports false outside a call.
func CallFromContext(ctx context.Context) (*Call, bool) {
	switch c := ctx.Value(callKey{}).(type) {
	case *Call:
		return c, true
	case *clientCall:
		return &c.Call, true
	}
	return nil, false
}

func withCall(ctx context.Context, c *Call) context.Context {
	return context.WithValue(ctx, callKey{}, c)
}

// Service returns the full service name, e.g. "example.thermostat.v1.Thermostat".
func (c *Call) Service() string { return c.service }

// Method returns the method name, e.g. "SetTarget".
func (c *Call) Method() string { return c.method }

// Procedure returns "/service/method", as gRPC names a method.
func (c *Call) Procedure() string { return "/" + c.service + "/" + c.method }

// Idempotency returns the method's idempotency level.
func (c *Call) Idempotency() Idempotency { return c.idempotency }

// IsClient reports whether this is the caller's side of the call.
func (c *Call) IsClient() bool { return c.isClient }

// Topic returns the request topic.
func (c *Call) Topic() string { return c.topic }

// Target returns the target the request was addressed to: a server ID, "_any"
// or "_all". In a gateway server this tells the handler which device is meant.
func (c *Call) Target() string { return c.target }

// Token returns the value of a custom topic token, such as "site" in
// "plant/{site}/{target}/{method}".
func (c *Call) Token(name string) string { return c.tokens[name] }

// Codec returns the name of the codec of the request, "proto" or "json".
func (c *Call) Codec() string { return c.codecName }

// RequestMetadata returns the request's metadata. On the client,
// interceptors may add to it before the request is sent (for example trace
// context); on the server it holds what the caller sent.
func (c *Call) RequestMetadata() Metadata {
	if c.reqMeta == nil {
		c.reqMeta = Metadata{}
	}
	return c.reqMeta
}

// ResponseMetadata returns the response's metadata. On the server, handlers
// and interceptors may add to it; on the client it holds what the server sent
// once the call has returned.
func (c *Call) ResponseMetadata() Metadata {
	if c.respMeta == nil {
		c.respMeta = Metadata{}
	}
	return c.respMeta
}
