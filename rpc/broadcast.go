package rpc

import (
	"context"
	"iter"

	"github.com/eclipse/paho.golang/paho"
)

// BroadcastReply is one server's answer to a broadcast.
type BroadcastReply struct {
	// Target is the ID of the server that answered (its mqttrpc-target),
	// or "" for a server without an ID (a gateway).
	Target string
	// Response is the decoded response, nil when Err is set.
	Response any
	// Err is the server's error (an *Error), or the error that kept the
	// broadcast from being published, with Target "".
	Err error
	// Metadata is the response's metadata.
	Metadata Metadata
}

// broadcastBuffer bounds the replies waiting for the reader of a broadcast.
const broadcastBuffer = 1024

// Broadcast calls the method on every server of the service (target "_all")
// and yields each answer as it arrives, until ctx ends or the loop stops.
// The broadcast's deadline is ctx's (10 s by default, see
// WithDefaultTimeout): servers answer within it, and the loop ends with it,
// since nobody knows how many servers will answer. newResp allocates one
// response message per reply. A server with an ID that answers twice (a
// redelivered request) is yielded once. Client interceptors see the
// publication of the request, wrapped for each broadcast; their returned
// response is nil.
//
//	for r := range stub.Broadcast(ctx, req, func() any { return new(pb.Reading) }) {
//		if r.Err != nil { ... }
//	}
func (s *Stub) Broadcast(ctx context.Context, req any, newResp func() any, opts ...CallOption) iter.Seq[BroadcastReply] {
	return func(yield func(BroadcastReply) bool) {
		if s.err != nil {
			yield(BroadcastReply{Err: s.err})
			return
		}
		c := s.client
		cc := s.newCall(opts, TargetAll)
		call, cfg := &cc.Call, &cc.cfg
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, c.timeout)
			defer cancel()
		}
		ctx = context.WithValue(ctx, callKey{}, cc)
		replies := make(chan *paho.Publish, broadcastBuffer)
		// Every publication's ID routes to replies: an interceptor may call
		// next more than once.
		var ids [][16]byte
		send := func(ctx context.Context, req any) (any, error) {
			out, timeoutProp, err := c.prepare(cc, s.template, req)
			if err != nil {
				return nil, err
			}
			if out.corr, err = c.conn.responses.register(&responseWaiter{client: c, ch: replies, broadcast: true}); err != nil {
				return nil, err
			}
			ids = append(ids, out.corr)
			out.publish.Properties.CorrelationData = out.corr[:]
			return nil, c.publishWithRetry(ctx, &out.publish, timeoutProp)
		}
		var err error
		if len(c.interceptors) == 0 {
			_, err = send(ctx, req)
		} else {
			_, err = chainInterceptors(send, c.interceptors)(ctx, req)
		}
		defer func() {
			for _, id := range ids {
				c.conn.responses.forget(id)
			}
		}()
		if err != nil {
			yield(BroadcastReply{Err: asError(err)})
			return
		}
		seen := map[string]bool{}
		for {
			select {
			case p, ok := <-replies:
				if !ok {
					return // client closed
				}
				replyCall := &Call{service: call.service, method: call.method, isClient: true, target: TargetAll, topic: call.topic}
				// A server that answers twice (a redelivered request) is
				// yielded once. Servers without an ID (gateways) send no
				// mqttrpc-target and cannot be told apart: each answer is
				// yielded.
				target := responseTarget(p)
				if target != "" {
					if seen[target] {
						continue
					}
					seen[target] = true
				}
				reply := BroadcastReply{Target: target}
				resp := newResp()
				if err := c.decodeResponse(replyCall, cfg.codec, p, resp); err != nil {
					reply.Err = err
				} else {
					reply.Response = resp
				}
				reply.Metadata = replyCall.respMeta
				if !yield(reply) {
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}
}

// Broadcast calls a method of a service that uses the default topic template
// on every server, without generated code; see Stub.Broadcast.
func (c *Client) Broadcast(ctx context.Context, service, method string, req any, newResp func() any, opts ...CallOption) iter.Seq[BroadcastReply] {
	s := Stub{client: c, service: service, method: method, qos: QoS1, template: defaultTemplate}
	return s.Broadcast(ctx, req, newResp, opts...)
}
