package rpc

// Connection callbacks (WithOnConnectionUp, WithOnConnectionDown) and the
// Conn's fleet wiring: the Will built into each CONNECT, the DISCONNECT of
// Close, and the Fleets told when the connection comes and goes.

import (
	"context"
	"net/url"
	"sync"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

// connHooks delivers connection events to the application's callbacks on
// a goroutine of the Conn, in order and outside every lock, and tells the
// Conn's Fleets at once (they must not block).
type connHooks struct {
	onUp   func()
	onDown func(error)

	mu      sync.Mutex
	events  []connEvent
	wake    chan struct{} // room for one signal
	done    chan struct{} // closed when the callback goroutine has ended
	fleets  []*Fleet
	running bool
}

// connEvent is one connection event for the callbacks: up carries the
// connection's ready channel (its subscriptions restored) and context.
type connEvent struct {
	up    bool
	ready <-chan struct{}
	gen   context.Context
	err   error
}

// setupFleet wires presence and the connection callbacks into the
// autopaho configuration, before the manager starts.
func (c *Conn) setupFleet(cfg *autopaho.ClientConfig, cc *connConfig, owned bool) {
	// Dial: on unless turned off. NewConnection: the application owns the
	// connection's CONNECT and sees its traffic, so off unless turned on,
	// and never over a Will of its own.
	on := owned
	if cc.presence != nil {
		on = *cc.presence
	}
	on = on && cfg.WillMessage == nil
	if on {
		c.presence = newConnPresence(c)
		userBuild := cfg.ConnectPacketBuilder
		cfg.ConnectPacketBuilder = func(cp *paho.Connect, u *url.URL) (*paho.Connect, error) {
			if userBuild != nil {
				var err error
				if cp, err = userBuild(cp, u); err != nil || cp == nil {
					return cp, err
				}
			}
			c.presence.buildWill(cp)
			return cp, nil
		}
		if cfg.DisconnectPacketBuilder == nil {
			cfg.DisconnectPacketBuilder = c.presence.disconnectPacket
		}
	}
	h := &c.hooks
	h.onUp, h.onDown = cc.onUp, cc.onDown
	if h.onUp != nil || h.onDown != nil {
		h.wake, h.done, h.running = make(chan struct{}, 1), make(chan struct{}), true
		go h.run(c.ctx) // owned by the Conn: it ends with c.ctx, Close waits (waitFleet)
	}
}

// connectionUp runs on autopaho's goroutine after Conn.connectionUp.
func (h *connHooks) connectionUp(c *Conn) {
	if c.presence != nil {
		c.presence.up()
	}
	c.resumeStreams()
	h.mu.Lock()
	fleets := h.fleets
	if h.running {
		c.mu.Lock()
		ev := connEvent{up: true, ready: c.readyCh, gen: c.genCtx}
		c.mu.Unlock()
		h.events = append(h.events, ev)
		h.signal()
	}
	h.mu.Unlock()
	for _, f := range fleets {
		f.connectionUp()
	}
}

// connectionDown runs on autopaho's goroutine after Conn.connectionDown.
func (h *connHooks) connectionDown(c *Conn) {
	if c.presence != nil {
		c.presence.down()
	}
	h.mu.Lock()
	fleets := h.fleets
	if h.running {
		reason, byBroker := c.session.disconnectReason()
		err := Errorf(Unavailable, "connection to the broker %s lost", c.broker)
		if byBroker {
			err = Errorf(Unavailable, "the broker %s disconnected: reason 0x%02x (%s)", c.broker, reason, disconnectReasonText(reason))
		}
		h.events = append(h.events, connEvent{err: err})
		h.signal()
	}
	h.mu.Unlock()
	for _, f := range fleets {
		f.connectionDown()
	}
}

func (h *connHooks) signal() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// run calls the callbacks, one event at a time. An up event waits until
// the connection's subscriptions are restored (or it went down), so that
// the callback sees what AwaitConnection sees.
func (h *connHooks) run(ctx context.Context) {
	defer close(h.done)
	for {
		h.mu.Lock()
		events := h.events
		h.events = nil
		h.mu.Unlock()
		for _, ev := range events {
			if ev.up {
				select {
				case <-ev.ready:
				case <-ev.gen.Done():
				}
				if ctx.Err() != nil {
					return
				}
				if h.onUp != nil {
					h.onUp()
				}
				continue
			}
			if ctx.Err() != nil {
				return
			}
			if h.onDown != nil {
				h.onDown(ev.err)
			}
		}
		select {
		case <-h.wake:
		case <-ctx.Done():
			return
		}
	}
}

// addFleet makes f hear of connection changes; the returned function
// stops it.
func (h *connHooks) addFleet(f *Fleet) func() {
	h.mu.Lock()
	h.fleets = append(append([]*Fleet(nil), h.fleets...), f)
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		next := make([]*Fleet, 0, len(h.fleets))
		for _, x := range h.fleets {
			if x != f {
				next = append(next, x)
			}
		}
		h.fleets = next
	}
}

// waitFleet waits for the goroutines of the fleet machinery once c.ctx
// has ended (Close).
func (c *Conn) waitFleet() {
	if c.presence != nil {
		c.presence.wait()
	}
	if c.hooks.running {
		<-c.hooks.done
	}
}

// WithOnConnectionUp calls f each time the connection to the broker is up
// and the subscriptions of its Clients and Servers are restored (when
// AwaitConnection would return): after Dial's first connection and after
// every reconnect. Device code uses it to publish state or resume work.
// Callbacks run on a goroutine of the Conn, one at a time and in order
// with those of WithOnConnectionDown, never under a lock of mqttrpc; f
// must return (Close waits for it). None runs after Close.
func WithOnConnectionUp(f func()) ConnOption {
	return connOptionFunc(func(c *connConfig) { c.onUp = f })
}

// WithOnConnectionDown calls f each time a connection to the broker that
// was up ends, with an Unavailable error saying why (the broker's
// DISCONNECT reason, or a lost connection); the Conn reconnects by itself.
// Callbacks run as described at WithOnConnectionUp: an up is always
// followed by its down before the next up.
func WithOnConnectionDown(f func(err error)) ConnOption {
	return connOptionFunc(func(c *connConfig) { c.onDown = f })
}

// generation returns the number of the connection that is up (or was up
// last): it grows with every connection.
func (c *Conn) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}
