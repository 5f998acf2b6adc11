package rpc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/internal/transport"
)

// publish sends p and maps every failure to a Code, following DESIGN.md:
// PUBACK 0x10 (no matching subscribers) is Unavailable unless p is retained
// (the broker keeps it), 0x87 PermissionDenied,
// 0x97 and 0x95 ResourceExhausted, a connection that is down Unavailable.
// A packet larger than the broker's Maximum Packet Size is not sent
// (ResourceExhausted): the broker would close the connection.
//
// The publish waits under ctx itself: when the connection goes down, the
// session guard (session.go) ends it if paho forgets it, and paho resends
// it on the next connection if the session lives on.
//
// paho's Publish heeds ctx only while it waits for a slot of the broker's
// Receive Maximum and for the acknowledgement (paho/client.go:905). Its
// writes, of the packet (client.go:892) and of the PUBACKs it sends under
// its session lock (state.go:455-467), wait for as long as the transport
// does. Over internal/transport with coalescing, writes never wait (they
// buffer) and transport.WaitWritable is the backpressure, under ctx: the
// caller runs Publish itself. Over any other net.Conn (TLS, WebSocket, no
// coalescing) a write may wait on the broker, so Publish runs on a
// goroutine of the Conn and the caller leaves it when ctx ends, whatever
// the broker does; the goroutine ends once paho's write is through or has
// failed, and Close waits for it.
func (c *Conn) publish(ctx context.Context, p *paho.Publish) error {
	if limit := c.packetLimit(); !fits(p, limit) {
		// The broker would close the connection: what is meant to go in
		// chunks was split before (a reconnection may have lowered the
		// limit since).
		return Errorf(ResourceExhausted, "a PUBLISH of %d bytes on %q exceeds the broker's Maximum Packet Size of %d bytes", publishSize(p), p.Topic, limit)
	}
	c.mu.Lock()
	closed, up, gen := c.closed, c.genCtx != nil, c.gen
	if !closed && up {
		c.pubs.Add(1)
	}
	c.mu.Unlock()
	switch {
	case closed:
		return errConnClosed
	case !up:
		return errNotConnected
	}
	var resp *paho.PublishResponse
	var err error
	inline, werr := c.dialed.waitWritable(ctx)
	switch {
	case werr != nil:
		c.pubs.Done()
		return contextError(werr, "waiting for the connection to take the publish")
	case inline:
		resp, err = c.cm.Publish(ctx, p)
		c.pubs.Done()
	default:
		op, _ := c.publishOps.Get().(*publishOp)
		if op == nil {
			op = &publishOp{done: make(chan publishResult, 1)}
		}
		op.c, op.ctx, op.p = c, ctx, p
		go op.run()
		select {
		case r := <-op.done:
			resp, err = r.resp, r.err
			*op = publishOp{done: op.done}
			c.publishOps.Put(op)
		case <-ctx.Done():
			// op stays with its goroutine and is dropped with it.
			return contextError(ctx.Err(), "publishing")
		}
	}
	// 0x10 on a retained message is no failure: the broker keeps it for
	// subscribers to come (schemas, presence records).
	if resp != nil && (resp.ReasonCode >= 0x80 || (resp.ReasonCode == 0x10 && !p.Retain)) {
		return Errorf(codeForReason(resp.ReasonCode), "broker answered the publish on %q with reason 0x%02x (%s)", p.Topic, resp.ReasonCode, reasonText(resp.ReasonCode))
	}
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return contextError(ctx.Err(), "publishing")
	}
	c.mu.Lock()
	closed, lost := c.closed, c.gen != gen || c.genCtx == nil
	c.mu.Unlock()
	switch {
	case closed:
		return errConnClosed
	case lost:
		return errConnLost
	}
	if errors.Is(err, autopaho.ConnectionDownError) {
		return errNotConnected
	}
	return &Error{code: Unavailable, err: fmt.Errorf("publish on %q failed: %w: %w", p.Topic, errTransport, err)}
}

// dialedConn holds the net.Conn of the current connection when Dial made
// it through internal/transport (nil otherwise), so that a publish can ask
// it whether a write would wait.
type dialedConn struct {
	nc atomic.Pointer[net.Conn]
}

// waitWritable waits under ctx until the current connection takes a packet
// without blocking its writer, and reports whether it can promise that
// (see transport.WaitWritable). A nil dialedConn cannot.
func (d *dialedConn) waitWritable(ctx context.Context) (bool, error) {
	if d == nil {
		return false, nil
	}
	nc := d.nc.Load()
	if nc == nil {
		return false, nil
	}
	return transport.WaitWritable(ctx, *nc)
}

// publishOp is one paho Publish on a goroutine of the Conn. It is reused
// once its caller has taken the result, so that a publish costs the
// goroutine's closure alone.
type publishOp struct {
	c    *Conn
	ctx  context.Context
	p    *paho.Publish
	done chan publishResult // room for the one result
}

// publishResult is what paho's Publish returned.
type publishResult struct {
	resp *paho.PublishResponse
	err  error
}

// run publishes. Once the result is sent the caller may reuse op: run
// touches it no more.
func (op *publishOp) run() {
	c := op.c
	resp, err := c.cm.Publish(op.ctx, op.p)
	op.done <- publishResult{resp, err}
	c.pubs.Done()
}

// errTransport marks failures of the connection, as opposed to answers of
// the broker: worth retrying once the connection is back.
var errTransport = errors.New("connection lost")

var (
	errNotConnected = &Error{code: Unavailable, err: fmt.Errorf("not connected to the broker (%w)", errTransport)}
	errConnLost     = &Error{code: Unavailable, err: fmt.Errorf("connection to the broker lost before the broker acknowledged (%w)", errTransport)}
)

// maxChunksInFlight bounds the chunks of one message published at once:
// they need not wait for each other's acknowledgements (the receiver
// places each by its index), and do not all hold goroutines.
const maxChunksInFlight = 16

// publishChunks publishes the chunks of one message, up to
// maxChunksInFlight at a time, and returns the first failure; the others
// are then given up. It returns once no publish of it runs.
func publishChunks(ctx context.Context, publish func(context.Context, *paho.Publish) error, chunks []*paho.Publish) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	slots := make(chan struct{}, maxChunksInFlight)
loop:
	for _, chunk := range chunks {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			break loop
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			if err := publish(ctx, chunk); err != nil {
				once.Do(func() {
					first = err
					cancel()
				})
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = contextError(ctx.Err(), "publishing the chunks of a message")
	}
	return first
}
