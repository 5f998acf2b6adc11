package rpc

import (
	"context"
	"errors"
	"strings"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

// maxFiltersPerSubscribe keeps SUBSCRIBE packets small.
const maxFiltersPerSubscribe = 32

// waitReady returns nil once the connection is up and its subscriptions
// restored. While disconnected it fails at once with Unavailable: a call
// should not wait out its deadline for a broker that is not there.
func (c *Conn) waitReady(ctx context.Context) error {
	c.mu.Lock()
	closed, up, ready := c.closed, c.up, c.readyCh
	c.mu.Unlock()
	if closed {
		return errConnClosed
	}
	if !up {
		return errNotConnected
	}
	select {
	case <-ready:
		return nil
	default:
	}
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return contextError(ctx.Err(), "waiting for subscriptions to be restored")
	}
}

// subscribe records filters to be restored after reconnects and subscribes
// now. It fails with Unavailable when not connected (the filters stay
// recorded and are subscribed at the next connection). A refusal by the
// broker is never Unavailable (see subackCode): the filters are forgotten.
func (c *Conn) subscribe(ctx context.Context, subs []paho.SubscribeOptions) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errConnClosed
	}
	for _, s := range subs {
		c.subs[s.Topic] = s
	}
	c.mu.Unlock()
	err := c.sendSubscribe(ctx, c.cm, subs)
	if err != nil && CodeOf(err) != Unavailable {
		c.forget(subs)
	}
	if err == nil {
		c.releaseCovered()
	}
	return err
}

func (c *Conn) forget(subs []paho.SubscribeOptions) {
	c.mu.Lock()
	for _, s := range subs {
		delete(c.subs, s.Topic)
	}
	c.mu.Unlock()
}

func (c *Conn) sendSubscribe(ctx context.Context, cm *autopaho.ConnectionManager, subs []paho.SubscribeOptions) error {
	return c.sendSubscribeRetry(ctx, cm, subs, 0)
}

func (c *Conn) sendSubscribeRetry(ctx context.Context, cm *autopaho.ConnectionManager, subs []paho.SubscribeOptions, retries int) error {
	if err := c.checkSupported(subs); err != nil {
		return err
	}
	opCtx, done := c.operationContext(ctx)
	if opCtx == nil {
		return errNotConnected
	}
	suback, err := cm.Subscribe(opCtx, &paho.Subscribe{Subscriptions: subs})
	done()
	if suback == nil {
		switch {
		case errors.Is(err, paho.ErrInvalidArguments):
			// paho refuses what CONNACK said the broker lacks; the
			// connection may have changed since checkSupported.
			if err := c.checkSupported(subs); err != nil {
				return err
			}
			return Errorf(InvalidArgument, "subscribe: %w", err)
		case ctx.Err() != nil:
			return contextError(ctx.Err(), "subscribing")
		case opCtx.Err() != nil:
			return errConnLost
		case errors.Is(err, autopaho.ConnectionDownError):
			return Errorf(Unavailable, "not connected to the broker")
		default:
			return Errorf(Unavailable, "subscribe: %w", err)
		}
	}
	var again []paho.SubscribeOptions
	for i, reason := range suback.Reasons {
		switch {
		case i >= len(subs) || reason < 0x80:
		case reason == 0x91 && retries < maxIDRetries:
			// Packet identifier in use: mochi counts identifiers of its own
			// PUBLISHes in flight to us (a persistent session's
			// redeliveries) as taken. paho picks the next one.
			again = append(again, subs[i])
		default:
			return Errorf(subackCode(reason), "broker %s refused the subscription to %q: %s (SUBACK 0x%02x)", c.broker, subs[i].Topic, subackText(reason), reason)
		}
	}
	if len(again) > 0 {
		return c.sendSubscribeRetry(ctx, cm, again, retries+1)
	}
	return nil
}

// maxIDRetries bounds the retries of a SUBSCRIBE or UNSUBSCRIBE that the
// broker refused with 0x91 (packet identifier in use).
const maxIDRetries = 8

// checkSupported refuses, with FailedPrecondition, filters that the
// current connection's CONNACK says the broker does not support (paho
// would refuse them with a bare "invalid arguments").
func (c *Conn) checkSupported(subs []paho.SubscribeOptions) error {
	c.mu.Lock()
	up, shared, wildcards := c.up, c.sharedSubs, c.wildcardSubs
	c.mu.Unlock()
	if !up {
		return nil
	}
	for _, s := range subs {
		switch {
		case !shared && strings.HasPrefix(s.Topic, "$share/"):
			return Errorf(FailedPrecondition, "broker %s does not support shared subscriptions (CONNACK Shared Subscription Available: 0), needed for %q: share groups (WithShareGroup, ToAny) need a broker that has them", c.broker, s.Topic)
		case !wildcards && strings.ContainsAny(s.Topic, "+#"):
			return Errorf(FailedPrecondition, "broker %s does not support wildcard subscriptions (CONNACK Wildcard Subscription Available: 0), needed for %q", c.broker, s.Topic)
		}
	}
	return nil
}

// unsubscribe unsubscribes filters if connected and forgets those the
// broker let go. Filters the broker refused to unsubscribe (UNSUBACK 0x80
// and above) stay recorded, and restored after reconnects, since the broker
// still delivers on them; the error names the first with its reason. While
// disconnected the filters are forgotten (a clean session loses them; a
// persistent session keeps them on the broker, and what arrives on them is
// handled as on any unclaimed topic).
func (c *Conn) unsubscribe(ctx context.Context, filters []string) error {
	if len(filters) == 0 {
		return nil
	}
	c.mu.Lock()
	removed := make(map[string]paho.SubscribeOptions, len(filters))
	for _, f := range filters {
		if s, ok := c.subs[f]; ok {
			removed[f] = s
		} else {
			removed[f] = paho.SubscribeOptions{Topic: f, QoS: 2}
		}
		// Not restored if the connection comes back meanwhile.
		delete(c.subs, f)
	}
	up := c.up
	c.mu.Unlock()
	if !up {
		return nil
	}
	return c.sendUnsubscribe(ctx, filters, removed, 0)
}

// sendUnsubscribe unsubscribes filters on the current connection; a filter
// the broker refused stays recorded (removed holds what to record again).
func (c *Conn) sendUnsubscribe(ctx context.Context, filters []string, removed map[string]paho.SubscribeOptions, retries int) error {
	opCtx, done := c.operationContext(ctx)
	if opCtx == nil {
		return nil
	}
	unsuback, err := c.cm.Unsubscribe(opCtx, &paho.Unsubscribe{Topics: filters})
	done()
	if unsuback == nil {
		switch {
		case ctx.Err() != nil:
			return contextError(ctx.Err(), "unsubscribing")
		case opCtx.Err() != nil:
			return errConnLost
		}
		return Errorf(Unavailable, "unsubscribe: %w", err)
	}
	var refused *Error
	var again []string
	c.mu.Lock()
	for i, reason := range unsuback.Reasons {
		if reason < 0x80 || i >= len(filters) {
			continue // 0x11, no subscription existed, is no failure either
		}
		if reason == 0x91 && retries < maxIDRetries {
			// Packet identifier in use (mochi, as for SUBSCRIBE): paho
			// picks the next one.
			again = append(again, filters[i])
			continue
		}
		if _, recorded := c.subs[filters[i]]; !recorded {
			c.subs[filters[i]] = removed[filters[i]]
		}
		if refused == nil {
			refused = Errorf(subackCode(reason), "broker %s refused to unsubscribe %q: %s (UNSUBACK 0x%02x); it still delivers on it", c.broker, filters[i], subackText(reason), reason)
		}
	}
	c.mu.Unlock()
	if refused != nil {
		return refused
	}
	if len(again) > 0 {
		return c.sendUnsubscribe(ctx, again, removed, retries+1)
	}
	return nil
}

// operationContext returns a context for one subscribe on the
// current connection: it ends with ctx or when this connection goes down,
// since paho may otherwise leave an operation on a dead connection waiting
// until ctx ends. It returns nil while disconnected. Call done afterwards.
func (c *Conn) operationContext(ctx context.Context) (opCtx context.Context, done func()) {
	c.mu.Lock()
	genCtx := c.genCtx
	c.mu.Unlock()
	if genCtx == nil {
		return nil, nil
	}
	opCtx, cancel := context.WithCancel(ctx)
	c.mu.Lock()
	if c.genCtx != genCtx || c.closed { // went down or closed meanwhile
		c.mu.Unlock()
		cancel()
		return opCtx, func() {}
	}
	if c.ops == nil {
		c.ops = map[uint64]context.CancelFunc{}
	}
	c.opSeq++
	id := c.opSeq
	c.ops[id] = cancel
	c.mu.Unlock()
	return opCtx, func() {
		c.mu.Lock()
		delete(c.ops, id)
		c.mu.Unlock()
		cancel()
	}
}

// cancelOps ends the operations of the connection that went down. c.mu is
// held.
func (c *Conn) cancelOps() {
	for id, cancel := range c.ops {
		cancel()
		delete(c.ops, id)
	}
}
