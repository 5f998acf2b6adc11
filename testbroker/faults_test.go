package testbroker_test

import (
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// pair connects a subscriber to filter at QoS 1 and a publisher.
func pair(t *testing.T, broker *testbroker.Broker, filter string) (pub, sub *client) {
	t.Helper()
	sub = connect(t, broker.Addr(), t.Name()+"-sub")
	sub.subscribe(t, paho.SubscribeOptions{Topic: filter, QoS: 1})
	pub = connect(t, broker.Addr(), t.Name()+"-pub")
	return pub, sub
}

func msg(topic, payload string) *paho.Publish {
	return &paho.Publish{QoS: 1, Topic: topic, Payload: []byte(payload)}
}

// Messages from one publisher reach a subscriber in order, so a message that
// was not delivered before the next one never will be.

func TestDropPublishes(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	pub, sub := pair(t, broker, "drop/#")

	broker.DropPublishes("drop/+/x", 2)
	for _, m := range []*paho.Publish{msg("drop/a/x", "lost-1"), msg("drop/a/y", "kept-1"), msg("drop/b/x", "lost-2"), msg("drop/c/x", "kept-2")} {
		if resp := pub.publish(t, m); resp.ReasonCode != 0 {
			t.Errorf("publish %q: reason 0x%02x, want a normal ack", m.Payload, resp.ReasonCode)
		}
	}
	sub.receivePayload(t, "kept-1")
	sub.receivePayload(t, "kept-2")
}

func TestDropPublishesUntilCleared(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	pub, sub := pair(t, broker, "drop/#")

	broker.DropPublishes("drop/#", 0)
	pub.publish(t, &paho.Publish{QoS: 0, Topic: "drop/1", Payload: []byte("lost-1")})
	pub.publish(t, msg("drop/2", "lost-2")) // acknowledged, so the broker has seen lost-1 too
	pub.publish(t, msg("drop/3", "lost-3"))
	broker.ClearFaults()
	pub.publish(t, msg("drop/4", "kept"))
	sub.receivePayload(t, "kept")
}

func TestDelayPublishes(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	pub, sub := pair(t, broker, "delay/#")
	const delay = 300 * time.Millisecond

	broker.DelayPublishes("delay/slow", 1, delay)
	slow := request("delay/slow", "slow")
	sent := time.Now()
	if resp := pub.publish(t, slow); resp.ReasonCode != 0 {
		t.Errorf("delayed publish acknowledged with 0x%02x", resp.ReasonCode)
	}
	pub.publish(t, msg("delay/fast", "fast")) // neither the sender nor other traffic waits
	sub.receivePayload(t, "fast")
	got := sub.receivePayload(t, "slow")
	if elapsed := time.Since(sent); elapsed < delay {
		t.Errorf("delayed message arrived after %v, want at least %v", elapsed, delay)
	}
	checkProperties(t, got, slow)

	pub.publish(t, msg("delay/slow", "on-time")) // the rule is used up
	sub.receivePayload(t, "on-time")
}

func TestDelayPublishesDiscardsExpired(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	pub, sub := pair(t, broker, "delay/#")

	broker.DelayPublishes("delay/expiring", 1, 1100*time.Millisecond)
	broker.DelayPublishes("delay/marker", 1, 2*time.Second)
	expiring := msg("delay/expiring", "expired")
	expiring.Properties = &paho.PublishProperties{MessageExpiry: uint32p(1)}
	pub.publish(t, expiring)
	pub.publish(t, msg("delay/marker", "marker"))
	sub.receivePayload(t, "marker")
}

func TestDuplicatePublishes(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	pub, sub := pair(t, broker, "dup/#")
	qos0 := connect(t, broker.Addr(), "dup-qos0-sub")
	qos0.subscribe(t, paho.SubscribeOptions{Topic: "dup/#", QoS: 0})

	broker.DuplicatePublishes("dup/#", 1)
	want := request("dup/call", "twice")
	pub.publish(t, want)
	pub.publish(t, msg("dup/call", "once"))

	first, second := sub.receivePayload(t, "twice"), sub.receivePayload(t, "twice")
	if first.Duplicate() || !second.Duplicate() {
		t.Errorf("DUP flags %v, %v; want false, true", first.Duplicate(), second.Duplicate())
	}
	if first.QoS != 1 || second.QoS != 1 {
		t.Errorf("QoS %d, %d; want 1, 1", first.QoS, second.QoS)
	}
	checkProperties(t, first, want)
	checkProperties(t, second, want)
	sub.receivePayload(t, "once")

	for _, p := range []*paho.Publish{qos0.receivePayload(t, "twice"), qos0.receivePayload(t, "twice")} {
		if p.QoS != 0 || p.Duplicate() {
			t.Errorf("QoS 0 subscriber got QoS %d, DUP %v; want 0, false", p.QoS, p.Duplicate())
		}
	}
	qos0.receivePayload(t, "once")
}

func TestDuplicatePublishesRespectsNoLocal(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	self := connect(t, broker.Addr(), "dup-no-local")
	self.subscribe(t,
		paho.SubscribeOptions{Topic: "nl/self", QoS: 1, NoLocal: true},
		paho.SubscribeOptions{Topic: "nl/marker", QoS: 1},
	)
	broker.DuplicatePublishes("nl/self", 1)
	self.publish(t, msg("nl/self", "own"))
	self.publish(t, msg("nl/marker", "marker"))
	self.receivePayload(t, "marker")
}

func TestRejectPublishesFailure(t *testing.T) {
	t.Parallel()
	for _, qos := range []byte{1, 2} {
		broker := testbroker.Start(t)
		pub, sub := pair(t, broker, "reject/#")

		broker.RejectPublishes("reject/#", 1, 0x87)
		denied := msg("reject/a", "denied")
		denied.QoS = qos
		resp, _ := pub.Publish(timeout(t), denied)
		if resp == nil || resp.ReasonCode != 0x87 {
			t.Errorf("QoS %d: rejected publish answered %+v, want reason 0x87", qos, resp)
		}
		pub.publish(t, msg("reject/a", "accepted"))
		sub.receivePayload(t, "accepted")
	}
}

func TestRejectPublishesNoMatchingSubscribers(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	pub, sub := pair(t, broker, "reject/#")

	broker.RejectPublishes("reject/#", 1, 0x10)
	want := request("reject/b", "delivered")
	if resp := pub.publish(t, want); resp.ReasonCode != 0x10 {
		t.Errorf("publish answered 0x%02x, want 0x10", resp.ReasonCode)
	}
	checkProperties(t, sub.receivePayload(t, "delivered"), want)
	if resp := pub.publish(t, msg("reject/b", "normal")); resp.ReasonCode != 0 {
		t.Errorf("publish after the rule was used up answered 0x%02x, want 0x00", resp.ReasonCode)
	}
	sub.receivePayload(t, "normal")
}

func TestInvalidFilterPanics(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	defer func() {
		if recover() == nil {
			t.Error("DropPublishes with filter \"a/#/b\" did not panic")
		}
	}()
	broker.DropPublishes("a/#/b", 1)
}
