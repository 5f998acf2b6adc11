package testbroker

import (
	"bytes"
	"net"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// sessionGateTimeout bounds how long a connection waits for another one with
// the same client ID to leave the gate. Nothing inside the gate waits for a
// peer, so it is never reached unless mochi stalls writing to a client.
const sessionGateTimeout = 2 * time.Second

// sessionGateHook closes a race in mochi's attachClient between two
// connections with the same client ID.
//
// When a connection whose session expires with it (clean start, or MQTT 5
// Session Expiry Interval 0) closes, mochi checks that the client was not
// taken over and then removes it: it unsubscribes its filters and deletes
// its entry from the client map, both by client ID. A new connection with
// the same ID takes the session over in inheritClientSession and adds itself
// to the map under that ID. If the takeover happens between the old
// connection's check and its cleanup, the cleanup removes the new connection
// (and possibly its fresh subscriptions): it stays connected but receives
// nothing. This happens both when a client reconnects right after
// disconnecting and when it takes over a connection that is still open.
//
// The hook makes the two steps mutually exclusive per client ID. A
// connection holds the gate for its ID from OnSessionEstablish (just before
// inheritClientSession) to OnSessionEstablished (after it joined the client
// map), and a closing connection whose session expires holds it from
// OnDisconnect (just before mochi's check) until its goroutine returns, which
// the listener reports. So either the old connection's cleanup finishes
// before the new one looks the ID up, and the new one starts afresh, or the
// new one took the session over before the old one checks, and the old one
// skips its cleanup. Connections with other IDs never wait, and a closing
// connection whose session persists (mochi's cleanup does nothing then) does
// not take the gate.
type sessionGateHook struct {
	mqtt.HookBase
	gate *sessionGate
}

func newSessionGateHook() *sessionGateHook {
	return &sessionGateHook{gate: newSessionGate()}
}

// ID identifies the hook in mochi's logs.
func (h *sessionGateHook) ID() string { return "testbroker-session-gate" }

// Provides tells mochi which hook methods to call.
func (h *sessionGateHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnDisconnect}, []byte{b})
}

// OnSessionEstablish runs right before mochi looks up an existing session
// with the client's ID and adds the client to its client map.
func (h *sessionGateHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	h.enter(cl, "connect")
}

// OnSessionEstablished runs once the client is in the client map.
func (h *sessionGateHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	h.gate.leave(cl.Net.Conn)
}

// OnDisconnect runs right before mochi decides whether to remove the client,
// which it does when the session expires and nobody took it over. The gate is
// left when the connection's goroutine returns (connectionDone).
func (h *sessionGateHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if expire && !cl.IsTakenOver() {
		h.enter(cl, "disconnect")
	}
}

// connectionDone is called by the listener once mochi is done with conn.
func (h *sessionGateHook) connectionDone(conn net.Conn) {
	h.gate.leave(conn)
}

func (h *sessionGateHook) enter(cl *mqtt.Client, step string) {
	if cl.Net.Conn == nil {
		return // an inline client: never connects through the listener
	}
	if !h.gate.enter(cl.ID, cl.Net.Conn, sessionGateTimeout) {
		h.Log.Warn("another connection with this client ID is slow to connect or disconnect; going ahead",
			"client", cl.ID, "step", step, "waited", sessionGateTimeout)
	}
}

// sessionGate lets one connection at a time through per client ID. A
// connection holds at most one gate, and leaving is keyed by the connection,
// so the listener can release whatever a finished connection still holds.
type sessionGate struct {
	mu     sync.Mutex
	byID   map[string]*gateHold
	byConn map[net.Conn]*gateHold
}

// gateHold is one connection's hold on the gate for one client ID.
type gateHold struct {
	id   string
	conn net.Conn
	left chan struct{} // closed when the connection leaves
}

func newSessionGate() *sessionGate {
	return &sessionGate{byID: make(map[string]*gateHold), byConn: make(map[net.Conn]*gateHold)}
}

// enter waits until no other connection holds the gate for id, then holds it
// for conn. It gives up after timeout and reports false, without holding it.
func (g *sessionGate) enter(id string, conn net.Conn, timeout time.Duration) bool {
	var expired <-chan time.Time
	for {
		g.mu.Lock()
		holder := g.byID[id]
		if holder == nil || holder.conn == conn {
			if holder == nil {
				g.leaveLocked(conn) // a connection holds one gate at most
				hold := &gateHold{id: id, conn: conn, left: make(chan struct{})}
				g.byID[id] = hold
				g.byConn[conn] = hold
			}
			g.mu.Unlock()
			return true
		}
		g.mu.Unlock()
		if expired == nil {
			timer := time.NewTimer(timeout)
			defer timer.Stop()
			expired = timer.C
		}
		select {
		case <-holder.left:
		case <-expired:
			return false
		}
	}
}

// leave releases the gate conn holds, if any.
func (g *sessionGate) leave(conn net.Conn) {
	if conn == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.leaveLocked(conn)
}

func (g *sessionGate) leaveLocked(conn net.Conn) {
	hold := g.byConn[conn]
	if hold == nil {
		return
	}
	delete(g.byConn, conn)
	delete(g.byID, hold.id)
	close(hold.left)
}
