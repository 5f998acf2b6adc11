package testbroker_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// reconnectIterations is how many times TestReconnectSameIDKeepsSubscriptions
// reconnects. Without testbroker's fix, mochi lost the new connection's
// session in a few of these under -race.
const reconnectIterations = 300

// receiveWithin returns the next message the client received, or nil if none
// arrived within d.
func (c *client) receiveWithin(d time.Duration) *paho.Publish {
	select {
	case p := <-c.received:
		return p
	case <-time.After(d):
		return nil
	}
}

// A client that reconnects with its client ID right after its clean-session
// connection closed gets a working session: mochi's cleanup of the old
// connection, keyed by client ID, used to remove the new connection from the
// broker and its subscriptions with it.
func TestReconnectSameIDKeepsSubscriptions(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	pub := connect(t, broker.Addr(), "reconnect-publisher")
	const topic = "reconnect/same-id"
	deadline := time.Now().Add(20 * time.Second)
	for i := range reconnectIterations {
		if time.Now().After(deadline) {
			t.Logf("stopping after %d iterations: time is up", i)
			break
		}
		sub, connack := dial(t, broker.Addr(), "same-id")
		if connack.SessionPresent {
			sub.close(t)
			t.Fatalf("iteration %d: session present after a clean start", i)
		}
		sub.subscribe(t, paho.SubscribeOptions{Topic: topic, QoS: 1})
		want := fmt.Sprintf("message %d", i)
		pub.publish(t, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(want)})
		got := sub.receiveWithin(2 * time.Second)
		sub.close(t)
		if got == nil {
			t.Fatalf("iteration %d: the subscriber received nothing within 2 s; connected clients: %v", i, broker.ConnectedClients())
		}
		if string(got.Payload) != want {
			t.Fatalf("iteration %d: received %q, want %q", i, got.Payload, want)
		}
	}
}

// Taking over a session that is still connected works as in mochi: the old
// connection gets DISCONNECT 0x8E and the new one its messages.
func TestTakeOverConnectedSession(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	pub := connect(t, broker.Addr(), "takeover-publisher")
	const topic = "takeover/topic"
	old := connect(t, broker.Addr(), "takeover")
	old.subscribe(t, paho.SubscribeOptions{Topic: topic, QoS: 1})
	for i := range 20 {
		c := connect(t, broker.Addr(), "takeover")
		select {
		case d := <-old.disconnects:
			if d.ReasonCode != 0x8e {
				t.Fatalf("iteration %d: old connection got DISCONNECT 0x%02x, want 0x8e", i, d.ReasonCode)
			}
		case <-time.After(hangGuard):
			t.Fatalf("iteration %d: old connection got no DISCONNECT", i)
		}
		c.subscribe(t, paho.SubscribeOptions{Topic: topic, QoS: 1})
		want := fmt.Sprintf("message %d", i)
		pub.publish(t, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(want)})
		c.receivePayload(t, want)
		old = c
	}
}

// A persistent session survives a disconnection: the reconnecting client
// finds its subscription without subscribing again.
func TestPersistentSessionResumes(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	pub := connect(t, broker.Addr(), "persistent-publisher")
	const topic = "persistent/topic"
	persistent := func(cp *paho.Connect) {
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: uint32p(60)}
	}
	c, _ := dial(t, broker.Addr(), "persistent", persistent)
	c.subscribe(t, paho.SubscribeOptions{Topic: topic, QoS: 1})
	c.close(t)
	for i := range 20 {
		resume := func(cp *paho.Connect) {
			persistent(cp)
			cp.CleanStart = false
		}
		c, connack := dial(t, broker.Addr(), "persistent", resume)
		if !connack.SessionPresent {
			c.close(t)
			t.Fatalf("iteration %d: no session present", i)
		}
		want := fmt.Sprintf("message %d", i)
		pub.publish(t, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(want)})
		got := c.receiveWithin(hangGuard)
		for got != nil && string(got.Payload) != want && got.Duplicate() {
			got = c.receiveWithin(hangGuard) // the previous message again: its PUBACK came too late
		}
		c.close(t)
		if got == nil || string(got.Payload) != want {
			t.Fatalf("iteration %d: received %v, want %q", i, got, want)
		}
	}
}
