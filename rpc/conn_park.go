package rpc

import (
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// listener receives the PUBLISH packets its match function claims.
type listener struct {
	handle func(p *paho.Publish, ack func()) bool
}

// noAck is the ack function when the broker is acknowledged on receipt.
func noAck() {}

type parkedPublish struct {
	p       *paho.Publish
	ack     func()
	expires time.Time
}

// Bounds of the parked packets.
const parkLimit = 1000

// parkTime is how long a packet stays parked, unless a test says otherwise
// (connConfig.parkTime).
const parkTime = 10 * time.Second

// addListener registers a receiver of PUBLISH packets and returns the
// function that removes it.
// A listener that claims a packet must call ack exactly once when it is done
// with it; the broker is acknowledged then (WithAckAfterHandling).
func (c *Conn) addListener(handle func(p *paho.Publish, ack func()) bool) func() {
	l := &listener{handle: handle}
	c.listenersMu.Lock()
	old := *c.listeners.Load()
	next := append(append(make([]*listener, 0, len(old)+1), old...), l)
	c.listeners.Store(&next)
	// Hand over what arrived before this listener existed.
	parked := c.parked[:0:0]
	for _, pp := range c.parked {
		if !handle(pp.p, pp.ack) {
			parked = append(parked, pp)
		}
	}
	c.parked = parked
	c.parkedChangedLocked()
	c.listenersMu.Unlock()
	return func() {
		c.listenersMu.Lock()
		defer c.listenersMu.Unlock()
		old := *c.listeners.Load()
		next := make([]*listener, 0, len(old))
		for _, x := range old {
			if x != l {
				next = append(next, x)
			}
		}
		c.listeners.Store(&next)
	}
}

// route runs on paho's receive goroutine for every PUBLISH. Listeners must
// not block.
func (c *Conn) route(pr paho.PublishReceived) (bool, error) {
	if pr.AlreadyHandled {
		return false, nil
	}
	ack := noAck
	if c.manualAck && pr.Packet.QoS > 0 {
		ack = c.ackFunc(pr)
	}
	own := false
	if p := c.presence; p != nil && len(pr.Packet.Topic) == len(p.topic) && pr.Packet.Topic == p.topic {
		p.observe(pr.Packet) // the own record: seen whoever claims it
		own = true
	}
	for _, l := range *c.listeners.Load() {
		if l.handle(pr.Packet, ack) {
			return true, nil
		}
	}
	if own {
		ack() // the presence's own subscription: not the application's
		return true, nil
	}
	if c.owned && pr.Packet.QoS > 0 {
		c.park(pr.Packet, ack)
		return true, nil
	}
	return false, nil
}

// park keeps an unclaimed packet for listeners still to come, and lets
// packets past their time or over the limit go (acknowledged: nobody wants
// them). A packet on a topic that a subscription of the Conn covers is
// acknowledged at once instead: the listener that made the subscription
// exists and did not claim it, so nobody will. Since acknowledgements go
// out in order, a parked packet holds back those of every later packet.
func (c *Conn) park(p *paho.Publish, ack func()) {
	if c.covered(p.Topic) {
		ack()
		return
	}
	now := time.Now()
	c.listenersMu.Lock()
	// A listener added since the route began may want it.
	for _, l := range *c.listeners.Load() {
		if l.handle(p, ack) {
			c.listenersMu.Unlock()
			return
		}
	}
	var release []func()
	keep := c.parked[:0]
	for i, pp := range c.parked {
		if now.After(pp.expires) || len(c.parked)-i >= parkLimit {
			release = append(release, pp.ack)
			continue
		}
		keep = append(keep, pp)
	}
	clear(c.parked[len(keep):])
	c.parked = append(keep, parkedPublish{p: p, ack: ack, expires: now.Add(c.parkTime)})
	c.parkedChangedLocked()
	c.scheduleReleaseLocked()
	c.listenersMu.Unlock()
	for _, ack := range release {
		ack()
	}
}

// covered reports whether a subscription the Conn made (for a Server or
// the Clients' response topic) matches topic.
func (c *Conn) covered(topic string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for filter := range c.subs {
		if topicMatchesFilter(withoutShare(filter), topic) {
			return true
		}
	}
	return false
}

// withoutShare strips "$share/<group>/" from a filter.
func withoutShare(filter string) string {
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		if _, f, ok := strings.Cut(rest, "/"); ok {
			return f
		}
	}
	return filter
}

// releaseCovered acknowledges the parked packets that a subscription now
// covers: the listener that subscribed was offered them when it was added
// and did not claim them.
func (c *Conn) releaseCovered() {
	c.listenersMu.Lock()
	var release []func()
	keep := c.parked[:0]
	for _, pp := range c.parked {
		if c.covered(pp.p.Topic) {
			release = append(release, pp.ack)
			continue
		}
		keep = append(keep, pp)
	}
	clear(c.parked[len(keep):])
	c.parked = keep
	c.parkedChangedLocked()
	c.listenersMu.Unlock()
	for _, ack := range release {
		ack()
	}
}

// parkedChangedLocked tells a test's onParked how many packets are parked.
// c.listenersMu is held, so that the counts arrive in order.
func (c *Conn) parkedChangedLocked() {
	if c.onParked != nil {
		c.onParked(len(c.parked))
	}
}

// scheduleReleaseLocked arms the timer that releases the parked packets
// when the oldest one's time is up, so that the broker learns of them even
// if nothing else arrives. c.listenersMu is held.
func (c *Conn) scheduleReleaseLocked() {
	if len(c.parked) == 0 || c.parkTimer != nil {
		return
	}
	c.parkTimer = time.AfterFunc(time.Until(c.parked[0].expires), c.releaseParked)
}

// releaseParked acknowledges and forgets the parked packets whose time is
// up: nobody wanted them.
func (c *Conn) releaseParked() {
	c.listenersMu.Lock()
	c.parkTimer = nil
	now := time.Now()
	var release []func()
	keep := c.parked[:0]
	for _, pp := range c.parked {
		if now.Before(pp.expires) {
			keep = append(keep, pp)
			continue
		}
		release = append(release, pp.ack)
	}
	clear(c.parked[len(keep):])
	c.parked = keep
	c.parkedChangedLocked()
	c.scheduleReleaseLocked()
	c.listenersMu.Unlock()
	for _, ack := range release {
		ack()
	}
}

// ackFunc returns the function that acknowledges a received PUBLISH, once,
// and only on the connection it arrived on: paho warns that an ack after a
// reconnect may acknowledge an unrelated packet of the new connection.
//
// The connection is the session guard's, counted at CONNACK: paho routes
// the packets a broker sends right after CONNACK (a persistent session's
// redeliveries) before autopaho runs OnConnectionUp, and an ack refused for
// one of them would hold back every later ack, as paho acks in order.
func (c *Conn) ackFunc(pr paho.PublishReceived) func() {
	conn, connected := c.session.connection()
	if !connected {
		return noAck // arrived as its connection ended; the broker redelivers it
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			if c.session.isCurrent(conn) {
				_ = pr.Client.Ack(pr.Packet)
			}
		})
	}
}
