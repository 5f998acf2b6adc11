package rpc

import (
	"context"
	"errors"
	"fmt"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

// publish sends p and maps every failure to a Code, following DESIGN.md:
// PUBACK 0x10 (no matching subscribers) is Unavailable, 0x87 PermissionDenied,
// 0x97 and 0x95 ResourceExhausted, a connection that is down Unavailable.
//
// The publish waits under ctx itself: when the connection goes down, the
// session guard (session.go) ends it if paho forgets it, and paho resends
// it on the next connection if the session lives on.
func (c *Conn) publish(ctx context.Context, p *paho.Publish) error {
	c.mu.Lock()
	closed, up, gen := c.closed, c.genCtx != nil, c.gen
	c.mu.Unlock()
	switch {
	case closed:
		return errConnClosed
	case !up:
		return errNotConnected
	}
	resp, err := c.cm.Publish(ctx, p)
	if resp != nil && (resp.ReasonCode >= 0x80 || resp.ReasonCode == 0x10) {
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

// errTransport marks failures of the connection, as opposed to answers of
// the broker: worth retrying once the connection is back.
var errTransport = errors.New("connection lost")

var (
	errNotConnected = &Error{code: Unavailable, err: fmt.Errorf("not connected to the broker (%w)", errTransport)}
	errConnLost     = &Error{code: Unavailable, err: fmt.Errorf("connection to the broker lost before the broker acknowledged (%w)", errTransport)}
)
