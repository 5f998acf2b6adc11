package rpc

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"
	"slices"
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
// WithDefaultTimeout): servers answer within it.
//
// Without a Fleet on the Conn (WatchFleet), nobody knows how many servers
// will answer and the loop ends with the deadline. With one whose presence
// is known complete, the broadcast expects every online server that serves
// the service and takes broadcasts: it ends as soon as each has answered,
// yields an Unavailable reply for an expected server that goes offline
// meanwhile, and at the deadline a DeadlineExceeded reply (Canceled if ctx
// was cancelled) for each expected server that did not answer, with its
// Target set. Answers from servers it did not expect are yielded too.
// FirstN and Quorum end it earlier.
//
// newResp allocates one response message per reply. A server with an ID
// that answers twice (a redelivered request) is yielded once. Client
// interceptors see the publication of the request, wrapped for each
// broadcast; their returned response is nil. See the generic Broadcast for
// typed replies.
//
//	for r := range stub.Broadcast(ctx, req, func() any { return new(pb.Reading) }) {
//		if r.Err != nil { ... }
//	}
func (s *Stub) Broadcast(ctx context.Context, req any, newResp func() any, opts ...CallOption) iter.Seq[BroadcastReply] {
	return func(yield func(BroadcastReply) bool) {
		s.broadcast(ctx, req, newResp, opts, yield)
	}
}

// Reply is one server's answer to a typed broadcast (Broadcast).
type Reply[Res any] struct {
	// ServerID is the ID of the server that answered (its mqttrpc-target),
	// or of the expected server that did not; "" for a server without an
	// ID (a gateway), and for an error that kept the broadcast from being
	// published.
	ServerID string
	// Response is the decoded response, nil when Err is set.
	Response *Res
	// Err is the server's error (an *Error), the reason an expected server
	// gave no answer (DeadlineExceeded, Unavailable), or the error that
	// kept the broadcast from being published.
	Err error
	// Metadata is the response's metadata.
	Metadata Metadata
}

// Broadcast calls a method through stub on every server of its service
// and yields typed replies, as Stub.Broadcast does: Res is the response
// message type (thermostatv1.Reading, say), and each reply carries a
// *Res. Generated code calls it for the broadcast form BroadcastM of each
// unary method M, which is how applications usually broadcast:
//
//	for r := range thermostat.BroadcastGetReading(ctx, &thermostatv1.GetReadingRequest{}) {
//		if r.Err != nil { log.Print(r.ServerID, r.Err); continue }
//		fmt.Println(r.ServerID, r.Response.GetCelsius())
//	}
//
// and code without a generated client writes
// rpc.Broadcast[thermostatv1.Reading](ctx, stub, req) for the same.
func Broadcast[Res any](ctx context.Context, stub *Stub, req any, opts ...CallOption) iter.Seq[Reply[Res]] {
	return func(yield func(Reply[Res]) bool) {
		stub.broadcast(ctx, req, func() any { return new(Res) }, opts, func(r BroadcastReply) bool {
			out := Reply[Res]{ServerID: r.Target, Err: r.Err, Metadata: r.Metadata}
			if r.Err == nil {
				out.Response, _ = r.Response.(*Res)
			}
			return yield(out)
		})
	}
}

// broadcast publishes one broadcast and yields its replies.
func (s *Stub) broadcast(ctx context.Context, req any, newResp func() any, opts []CallOption, yield func(BroadcastReply) bool) {
	if s.err != nil {
		yield(BroadcastReply{Err: s.err})
		return
	}
	c := s.client
	cc := s.newCall(opts, TargetAll)
	call, cfg := &cc.Call, &cc.cfg
	var limits broadcastConfig
	if cfg.broadcast != nil {
		limits = *cfg.broadcast
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	ctx = context.WithValue(ctx, callKey{}, cc)
	// Whom to expect, from the Fleet: the watcher is registered before the
	// list is taken, so that no departure in between is missed.
	var (
		expect  map[string]bool // nil: nobody knows
		offline <-chan FleetEvent
	)
	if f := c.conn.fleet.Load(); f != nil {
		if w, _ := f.addWatcher(false); w != nil {
			defer f.removeWatcher(w)
			offline = w.ch
			if ids, ok := f.expected(call.service); ok {
				expect = ids
			}
		}
	}
	replies := make(chan response, broadcastBuffer)
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
		return nil, c.publishWithRetry(ctx, &out.publish, timeoutProp, TargetAll)
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
			c.forgetChunks(id)
		}
	}()
	if err != nil {
		yield(BroadcastReply{Err: asError(err)})
		return
	}
	seen := map[string]bool{}
	okReplies, allReplies := 0, 0
	for expect == nil || len(expect) > 0 {
		select {
		case r, ok := <-replies:
			if !ok {
				return // client closed
			}
			p := r.publish
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
				delete(expect, target)
			}
			reply := BroadcastReply{Target: target}
			resp := newResp()
			if r.err != nil {
				reply.Err = r.err // its chunks were refused
			} else if err := c.decodeResponse(replyCall, cfg.codec, p, resp); err != nil {
				reply.Err = explainChunkRefusal(err)
			} else {
				reply.Response = resp
				okReplies++
			}
			allReplies++
			reply.Metadata = replyCall.respMeta
			if !yield(reply) {
				return
			}
			switch {
			case limits.firstN > 0 && allReplies >= limits.firstN:
				return
			case limits.quorum > 0 && okReplies >= limits.quorum:
				return
			case limits.quorum > 0 && expect != nil && okReplies+len(expect) < limits.quorum:
				reportMissing(ctx, expect, yield) // the quorum cannot be reached
				return
			}
		case ev, ok := <-offline:
			if !ok {
				offline = nil // the watcher fell behind or the Fleet closed: wait for the deadline
				continue
			}
			if id := ev.Server.ID; ev.Kind == ServerOffline && expect[id] {
				delete(expect, id)
				if !yield(BroadcastReply{Target: id, Err: Errorf(Unavailable, "server %q went offline during the broadcast", id)}) {
					return
				}
				if limits.quorum > 0 && okReplies+len(expect) < limits.quorum {
					reportMissing(ctx, expect, yield)
					return
				}
			}
		case <-ctx.Done():
			reportMissing(ctx, expect, yield)
			return
		}
	}
}

// reportMissing yields a reply for each expected server that did not
// answer, in ID order: DeadlineExceeded when ctx's deadline passed or the
// broadcast gave up, Canceled when ctx was cancelled.
func reportMissing(ctx context.Context, expect map[string]bool, yield func(BroadcastReply) bool) {
	for _, id := range slices.Sorted(maps.Keys(expect)) {
		err := Errorf(DeadlineExceeded, "server %q did not answer the broadcast", id)
		if errors.Is(ctx.Err(), context.Canceled) {
			err = wrapCause(Canceled, ctx.Err(), fmt.Sprintf("broadcast canceled before server %q answered", id))
		}
		if !yield(BroadcastReply{Target: id, Err: err}) {
			return
		}
	}
}

// Broadcast calls a method of a service that uses the default topic template
// on every server, without generated code; see Stub.Broadcast.
func (c *Client) Broadcast(ctx context.Context, service, method string, req any, newResp func() any, opts ...CallOption) iter.Seq[BroadcastReply] {
	s := Stub{client: c, service: service, method: method, qos: QoS1, template: defaultTemplate}
	return s.Broadcast(ctx, req, newResp, opts...)
}
