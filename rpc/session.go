package rpc

import (
	"context"
	"io"
	"sync"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho/session"
)

// sessionGuard wraps paho's session state so that a QoS 1 or 2 publish
// waiting for its acknowledgement ends when the state forgets it.
//
// paho.golang (v0.23) drops the transactions in flight without a word when
// it cleans the session: on a lost connection whose Session Expiry Interval
// is 0, and on a CONNACK without Session Present. A publish waiting for its
// PUBACK would then wait until its context ends, that is until the call's
// deadline. The guard remembers which response channel waits for which
// packet identifier and, once paho has cleaned, sends each the empty packet
// paho itself sends at shutdown, so the publish fails at once and the call
// gets Unavailable. While the session lives on, paho resends the publish on
// the next connection and the publish waits for that acknowledgement.
//
// This spares every publish a context of its own that the connection's end
// cancels (six allocations and a map of children in the caller's context
// per publish).
type sessionGuard struct {
	session.SessionManager

	mu        sync.Mutex
	connected bool
	expiry    uint32                                  // Session Expiry Interval in force, as paho's state computes it
	waiting   map[uint16]chan<- packets.ControlPacket // publishes awaiting their final acknowledgement
	cleans    uint64                                  // how often the waiting publishes were ended
	// conns counts connections at their CONNACK: before paho routes the
	// connection's first PUBLISH, so an ack can tell its connection.
	conns uint64
	// disconnect is the reason of the broker's DISCONNECT that ended the
	// last connection, if it sent one (disconnected).
	disconnect   byte
	disconnected bool

	// contended, set by tests before use, runs when AddToSession finds
	// g.mu held and is about to wait for it.
	contended func()
}

func newSessionGuard(inner session.SessionManager) *sessionGuard {
	return &sessionGuard{SessionManager: inner, waiting: map[uint16]chan<- packets.ControlPacket{}}
}

// ConAckReceived passes the CONNACK on; without Session Present paho has
// cleaned the session.
//
// g.mu is held across paho's own call (here and in ConnectionLost), so that
// to AddToSession a clean of paho's and the guard's count of cleans are one
// step: a publish that paho took into its session around a clean is never
// recorded, and so never ended while paho still tracks it (paho would block
// sending it its acknowledgement later). The lock order is always g.mu,
// then paho's own lock: AddToSession and PacketReceived call paho without
// holding g.mu.
func (g *sessionGuard) ConAckReceived(conn io.Writer, cp *packets.Connect, ca *packets.Connack) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	err := g.SessionManager.ConAckReceived(conn, cp, ca)
	if g.connected && g.expiry == 0 {
		g.endAllLocked() // paho treats the previous connection as lost first
	}
	g.connected = true
	g.conns++
	g.disconnected = false
	switch {
	case ca.Properties != nil && ca.Properties.SessionExpiryInterval != nil:
		g.expiry = *ca.Properties.SessionExpiryInterval
	case cp.Properties != nil && cp.Properties.SessionExpiryInterval != nil:
		g.expiry = *cp.Properties.SessionExpiryInterval
	default:
		g.expiry = 0
	}
	if !ca.SessionPresent {
		g.endAllLocked()
	}
	return err
}

// ConnectionLost passes the loss on; with a Session Expiry Interval of 0
// paho has cleaned the session.
func (g *sessionGuard) ConnectionLost(dp *packets.Disconnect) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	err := g.SessionManager.ConnectionLost(dp)
	if !g.connected {
		return err
	}
	g.connected = false
	if dp != nil {
		g.disconnect, g.disconnected = dp.ReasonCode, true
	}
	if dp != nil && dp.Properties != nil && dp.Properties.SessionExpiryInterval != nil {
		g.expiry = *dp.Properties.SessionExpiryInterval
	}
	if g.expiry == 0 {
		g.endAllLocked()
	}
	return err
}

// AddToSession remembers the response channel of a publish that paho took
// into its session.
func (g *sessionGuard) AddToSession(ctx context.Context, p session.Packet, resp chan<- packets.ControlPacket) error {
	g.lockForAdd()
	cleans := g.cleans
	g.mu.Unlock()
	err := g.SessionManager.AddToSession(ctx, p, resp)
	if pub, ok := p.(*packets.Publish); ok && err == nil {
		g.mu.Lock()
		switch {
		case g.cleans == cleans:
			g.waiting[pub.PacketID] = resp
		case g.expiry == 0:
			// The session was cleaned meanwhile, and every connection
			// cleans it (Session Expiry Interval 0): whether paho took the
			// packet before the clean or after (into a session the next
			// CONNACK cleans again), no acknowledgement will ever come for
			// it, so nothing but this sends on resp. End the publish now,
			// as endAllLocked does; it fails with Unavailable and is
			// retried on the new connection. (Left to its context, a
			// server's answer waited out the call's deadline: 3 runs in
			// 150 of TestFaultTable's cut of the server's connection.)
			select {
			case resp <- packets.ControlPacket{}:
			default:
			}
		default:
			// A session that lives on: paho may resend the packet and
			// send its acknowledgement on resp; leave the publish to its
			// context rather than risk blocking paho on a full channel.
		}
		g.mu.Unlock()
	}
	return err
}

// lockForAdd takes g.mu for AddToSession, telling g.contended (tests) when
// it has to wait for it.
func (g *sessionGuard) lockForAdd() {
	if g.contended == nil {
		g.mu.Lock()
		return
	}
	if !g.mu.TryLock() {
		g.contended()
		g.mu.Lock()
	}
}

// PacketReceived forgets a publish when its final acknowledgement comes,
// before paho frees the packet identifier for the next one. (Should paho
// clean the session between this and its handling of the acknowledgement,
// the publish is forgotten by both and waits for its context: a miss, never
// a second answer.)
func (g *sessionGuard) PacketReceived(recv *packets.ControlPacket, pubChan chan<- *packets.Publish) error {
	var id uint16
	switch rp := recv.Content.(type) {
	case *packets.Puback:
		id = rp.PacketID
	case *packets.Pubcomp:
		id = rp.PacketID
	case *packets.Pubrec:
		if rp.ReasonCode >= 0x80 {
			id = rp.PacketID
		}
	}
	if id != 0 {
		g.mu.Lock()
		delete(g.waiting, id)
		g.mu.Unlock()
	}
	return g.SessionManager.PacketReceived(recv, pubChan)
}

// connection returns the number of the current connection and whether it
// is up (between its CONNACK and its loss).
func (g *sessionGuard) connection() (conn uint64, connected bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.conns, g.connected
}

// isCurrent reports whether connection conn is still up.
func (g *sessionGuard) isCurrent(conn uint64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.connected && g.conns == conn
}

// disconnectReason returns the reason code of the DISCONNECT that ended the
// last connection; byBroker is false if the broker sent none (the
// connection broke, or we disconnected).
func (g *sessionGuard) disconnectReason() (reason byte, byBroker bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.disconnect, g.disconnected
}

// close ends every publish still waiting. Call it only once the connection
// manager has stopped: then no acknowledgement can come, and paho, which
// may still track those publishes, never sends on their channels again.
func (g *sessionGuard) close() {
	g.mu.Lock()
	g.endAllLocked()
	g.mu.Unlock()
}

// endAllLocked ends the waiting publishes with the empty packet. The
// channels have room for one packet and paho, having forgotten them, sends
// nothing more on them; one that is full already holds its answer. g.mu is
// held.
func (g *sessionGuard) endAllLocked() {
	for id, resp := range g.waiting {
		select {
		case resp <- packets.ControlPacket{}:
		default:
		}
		delete(g.waiting, id)
	}
	g.cleans++
}
