package testbroker_test

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// request returns a publish carrying every property an mqttrpc request uses.
func request(topic, payload string) *paho.Publish {
	return &paho.Publish{
		QoS:     1,
		Topic:   topic,
		Payload: []byte(payload),
		Properties: &paho.PublishProperties{
			ResponseTopic:   "mqttrpc/responses/caller",
			CorrelationData: []byte{0x01, 0x8f, 0x00, 0xff},
			MessageExpiry:   uint32p(60),
			ContentType:     "application/json",
			PayloadFormat:   bytep(1),
			User: paho.UserProperties{
				{Key: "mqttrpc-version", Value: "1"},
				{Key: "dup", Value: "first"},
				{Key: "dup", Value: "second"},
				{Key: "empty", Value: ""},
			},
		},
	}
}

// checkProperties checks that got carries want's properties; the expiry may
// have counted down by at most a second.
func checkProperties(t *testing.T, got, want *paho.Publish) {
	t.Helper()
	g, w := got.Properties, want.Properties
	if g == nil {
		t.Fatalf("message %q has no properties", got.Payload)
	}
	if g.ResponseTopic != w.ResponseTopic {
		t.Errorf("ResponseTopic %q, want %q", g.ResponseTopic, w.ResponseTopic)
	}
	if !bytes.Equal(g.CorrelationData, w.CorrelationData) {
		t.Errorf("CorrelationData % x, want % x", g.CorrelationData, w.CorrelationData)
	}
	if g.ContentType != w.ContentType {
		t.Errorf("ContentType %q, want %q", g.ContentType, w.ContentType)
	}
	if g.PayloadFormat == nil || *g.PayloadFormat != *w.PayloadFormat {
		t.Errorf("PayloadFormat %v, want %d", g.PayloadFormat, *w.PayloadFormat)
	}
	if g.MessageExpiry == nil || *g.MessageExpiry > *w.MessageExpiry || *g.MessageExpiry+1 < *w.MessageExpiry {
		t.Errorf("MessageExpiry %v, want %d or one less", g.MessageExpiry, *w.MessageExpiry)
	}
	if !slices.Equal(g.User, w.User) {
		t.Errorf("user properties %v, want %v", g.User, w.User)
	}
}

func TestPropertiesPassThrough(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	plain := connect(t, broker.Addr(), "sub-plain")
	// A CONNECT with properties but RequestProblemInfo unset asks for no
	// problem information, as autopaho does when SessionExpiryInterval is set.
	noProblemInfo := connect(t, broker.Addr(), "sub-no-problem-info", func(cp *paho.Connect) {
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: uint32p(0)}
	})
	for _, sub := range []*client{plain, noProblemInfo} {
		sub.subscribe(t, paho.SubscribeOptions{Topic: "props/#", QoS: 1})
	}
	pub := connect(t, broker.Addr(), "pub-props")

	want := request("props/a", "req")
	pub.publish(t, want)
	for _, sub := range []*client{plain, noProblemInfo} {
		t.Run(sub.id, func(t *testing.T) {
			checkProperties(t, sub.receivePayload(t, "req"), want)
		})
	}
}

func TestNoExpiryStaysWithoutExpiry(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	sub := connect(t, broker.Addr(), "sub-no-expiry")
	sub.subscribe(t, paho.SubscribeOptions{Topic: "noexp", QoS: 1})
	pub := connect(t, broker.Addr(), "pub-no-expiry")
	pub.publish(t, &paho.Publish{QoS: 1, Topic: "noexp", Payload: []byte("forever")})
	if got := sub.receivePayload(t, "forever"); got.Properties != nil && got.Properties.MessageExpiry != nil {
		t.Errorf("message sent without expiry arrived with MessageExpiry %d", *got.Properties.MessageExpiry)
	}
}

// WithMaxPacketSize announces the limit in CONNACK and closes the
// connection of a client that sends a larger packet; smaller ones pass.
func TestMaxPacketSize(t *testing.T) {
	b := testbroker.Start(t, testbroker.WithMaxPacketSize(1024))
	sub := connect(t, b.Addr(), "sub")
	if _, err := sub.Subscribe(timeout(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "t", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	pub, ack := dial(t, b.Addr(), "pub")
	defer pub.close(t)
	if ack.Properties == nil || ack.Properties.MaximumPacketSize == nil || *ack.Properties.MaximumPacketSize != 1024 {
		t.Fatalf("CONNACK Maximum Packet Size = %v, want 1024", ack.Properties)
	}
	if _, err := pub.Publish(timeout(t), &paho.Publish{Topic: "t", QoS: 1, Payload: make([]byte, 900)}); err != nil {
		t.Fatalf("a publish under the limit: %v", err)
	}
	select {
	case p := <-sub.received:
		if len(p.Payload) != 900 {
			t.Fatalf("received %d bytes", len(p.Payload))
		}
	case <-time.After(hangGuard):
		t.Fatal("the publish under the limit was not delivered")
	}
	_, _ = pub.Publish(timeout(t), &paho.Publish{Topic: "t", QoS: 0, Payload: make([]byte, 2000)}) // QoS 0: nothing to wait for
	select {
	case <-pub.Done():
	case <-time.After(hangGuard):
		t.Fatal("the connection of a client that sent a packet over the limit stayed open")
	}
	select {
	case p := <-sub.received:
		t.Fatalf("a packet over the limit was delivered (%d bytes)", len(p.Payload))
	default:
	}
}
