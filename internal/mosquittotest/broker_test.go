package mosquittotest_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mqttrpc/mqttrpc/internal/mosquittotest"
)

const hangGuard = 10 * time.Second

func timeout(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	t.Cleanup(cancel)
	return ctx
}

type client struct {
	*paho.Client
	connack  *paho.Connack
	received chan *paho.Publish
}

func dial(t *testing.T, addr, id string, edit ...func(*paho.Connect)) (*client, error) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &client{received: make(chan *paho.Publish, 2048)}
	c.Client = paho.NewClient(paho.ClientConfig{
		ClientID: id,
		Conn:     conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			c.received <- pr.Packet
			return true, nil
		}},
	})
	cp := &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30}
	for _, e := range edit {
		e(cp)
	}
	c.connack, err = c.Connect(timeout(t), cp)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	t.Cleanup(func() {
		_ = c.Disconnect(&paho.Disconnect{})
		<-c.Done()
	})
	return c, nil
}

func connect(t *testing.T, addr, id string, edit ...func(*paho.Connect)) *client {
	t.Helper()
	c, err := dial(t, addr, id, edit...)
	if err != nil {
		t.Fatalf("connect %s to %s: %v", id, addr, err)
	}
	return c
}

func (c *client) subscribe(t *testing.T, filter string) {
	t.Helper()
	suback, err := c.Subscribe(timeout(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if err != nil || suback.Reasons[0] >= 0x80 {
		t.Fatalf("subscribe %q: %v %v", filter, err, suback)
	}
}

func (c *client) receive(t *testing.T) *paho.Publish {
	t.Helper()
	select {
	case p := <-c.received:
		return p
	case <-time.After(hangGuard):
		t.Fatal("nothing received")
		return nil
	}
}

func TestStart(t *testing.T) {
	t.Parallel()
	broker := mosquittotest.Start(t)
	if !strings.HasPrefix(broker.Addr(), "127.0.0.1:") {
		t.Errorf("Addr() = %q", broker.Addr())
	}
	if broker.URL() != "mqtt://"+broker.Addr() {
		t.Errorf("URL() = %q, Addr() = %q", broker.URL(), broker.Addr())
	}
	c := connect(t, broker.Addr(), "start")
	if rm := c.connack.Properties.ReceiveMaximum; rm != nil && *rm < 1000 {
		t.Errorf("CONNACK Receive Maximum %d, want at least 1000", *rm)
	}
}

func TestPropertiesRoundTrip(t *testing.T) {
	t.Parallel()
	broker := mosquittotest.Start(t)
	sub := connect(t, broker.Addr(), "sub")
	sub.subscribe(t, "mqttrpc/#")
	pub := connect(t, broker.Addr(), "pub")

	expiry, format := uint32(30), byte(1)
	want := &paho.Publish{
		QoS:     1,
		Topic:   "mqttrpc/example.Svc/dev-1/Get",
		Payload: []byte(`{"id":1}`),
		Properties: &paho.PublishProperties{
			ResponseTopic:   "mqttrpc/responses/pub",
			CorrelationData: []byte{0, 1, 2, 0xff},
			MessageExpiry:   &expiry,
			ContentType:     "application/json",
			PayloadFormat:   &format,
			User:            paho.UserProperties{{Key: "mqttrpc-version", Value: "1"}, {Key: "k", Value: "a"}, {Key: "k", Value: "b"}},
		},
	}
	resp, err := pub.Publish(timeout(t), want)
	if err != nil || resp.ReasonCode != 0 {
		t.Fatalf("publish: %v, %+v", err, resp)
	}
	got := sub.receive(t)
	g, w := got.Properties, want.Properties
	if !bytes.Equal(got.Payload, want.Payload) || got.Topic != want.Topic {
		t.Errorf("received %q on %q", got.Payload, got.Topic)
	}
	if g.ResponseTopic != w.ResponseTopic || !bytes.Equal(g.CorrelationData, w.CorrelationData) || g.ContentType != w.ContentType {
		t.Errorf("properties %+v, want %+v", g, w)
	}
	if g.PayloadFormat == nil || *g.PayloadFormat != format {
		t.Errorf("PayloadFormat %v, want %d", g.PayloadFormat, format)
	}
	if g.MessageExpiry == nil || *g.MessageExpiry > expiry || *g.MessageExpiry+1 < expiry {
		t.Errorf("MessageExpiry %v, want %d or one less", g.MessageExpiry, expiry)
	}
	if !slices.Equal(g.User, w.User) {
		t.Errorf("user properties %v, want %v", g.User, w.User)
	}
}

// Other tests rely on this: Mosquitto reports a QoS 1 publish nobody receives.
func TestPubackNoMatchingSubscribers(t *testing.T) {
	t.Parallel()
	broker := mosquittotest.Start(t)
	pub := connect(t, broker.Addr(), "lonely")
	resp, err := pub.Publish(timeout(t), &paho.Publish{QoS: 1, Topic: "nobody/listens", Payload: []byte("x")})
	if err != nil || resp.ReasonCode != 0x10 {
		t.Fatalf("publish without subscribers: %v, %+v; want reason 0x10", err, resp)
	}

	sub := connect(t, broker.Addr(), "listener")
	sub.subscribe(t, "nobody/listens")
	resp, err = pub.Publish(timeout(t), &paho.Publish{QoS: 1, Topic: "nobody/listens", Payload: []byte("y")})
	if err != nil || resp.ReasonCode != 0 {
		t.Fatalf("publish with a subscriber: %v, %+v; want reason 0x00", err, resp)
	}
}

func TestRestartKeepsPort(t *testing.T) {
	t.Parallel()
	broker := mosquittotest.Start(t)
	addr := broker.Addr()
	before := connect(t, addr, "before")
	broker.Restart()
	select {
	case <-before.Done():
	case <-time.After(hangGuard):
		t.Fatal("the connection survived the restart")
	}
	if broker.Addr() != addr {
		t.Errorf("Addr() after Restart = %q, want %q", broker.Addr(), addr)
	}
	sub := connect(t, addr, "after")
	sub.subscribe(t, "restart")
	if _, err := sub.Publish(timeout(t), &paho.Publish{QoS: 1, Topic: "restart", Payload: []byte("back")}); err != nil {
		t.Fatal(err)
	}
	if got := sub.receive(t); string(got.Payload) != "back" {
		t.Errorf("received %q", got.Payload)
	}
}

func TestStop(t *testing.T) {
	t.Parallel()
	broker := mosquittotest.Start(t)
	broker.Stop()
	broker.Stop()
	if conn, err := net.Dial("tcp", broker.Addr()); err == nil {
		_ = conn.Close()
		t.Error("mosquitto still accepts connections after Stop")
	}
}

func TestWithAnonymousFalse(t *testing.T) {
	t.Parallel()
	broker := mosquittotest.Start(t, mosquittotest.WithAnonymous(false))
	if _, err := dial(t, broker.Addr(), "anonymous"); err == nil {
		t.Error("an anonymous client connected with allow_anonymous false")
	}
}

func TestThousandConcurrentQoS1Publishes(t *testing.T) {
	t.Parallel()
	broker := mosquittotest.Start(t)
	sub := connect(t, broker.Addr(), "many-sub")
	sub.subscribe(t, "many/#")
	pub := connect(t, broker.Addr(), "many-pub")
	const n = 1000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			resp, err := pub.Publish(timeout(t), &paho.Publish{QoS: 1, Topic: fmt.Sprintf("many/%d", i), Payload: []byte(fmt.Sprint(i))})
			if err == nil && resp.ReasonCode != 0 {
				err = fmt.Errorf("reason 0x%02x", resp.ReasonCode)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got := map[string]bool{}
	for range n {
		got[string(sub.receive(t).Payload)] = true
	}
	if len(got) != n {
		t.Errorf("received %d distinct messages, want %d", len(got), n)
	}
}

// A retained message survives Restart with WithPersistence and is lost
// without it. The subscriber publishes a marker after subscribing: the
// broker sends the retained messages first, so the first message tells.
func TestRestartPersistence(t *testing.T) {
	t.Parallel()
	for _, persist := range []bool{true, false} {
		t.Run(fmt.Sprintf("persistence=%t", persist), func(t *testing.T) {
			t.Parallel()
			var opts []mosquittotest.Option
			if persist {
				opts = append(opts, mosquittotest.WithPersistence())
			}
			broker := mosquittotest.Start(t, opts...)
			pub := connect(t, broker.Addr(), "keeper")
			if _, err := pub.Publish(timeout(t), &paho.Publish{QoS: 1, Retain: true, Topic: "keep/retained", Payload: []byte("kept")}); err != nil {
				t.Fatal(err)
			}
			broker.Restart()
			sub := connect(t, broker.Addr(), "reader")
			sub.subscribe(t, "keep/#")
			if _, err := sub.Publish(timeout(t), &paho.Publish{QoS: 1, Topic: "keep/marker", Payload: []byte("marker")}); err != nil {
				t.Fatal(err)
			}
			first := sub.receive(t)
			switch got := first.Topic + " " + string(first.Payload); {
			case persist && got != "keep/retained kept":
				t.Errorf("first message after a restart with persistence: %q, want the retained one", got)
			case !persist && got != "keep/marker marker":
				t.Errorf("first message after a restart without persistence: %q, want the marker", got)
			}
		})
	}
}

// A bridge carries its topics both ways, the retain flag and the
// properties kept; other topics stay on their broker.
func TestWithBridge(t *testing.T) {
	t.Parallel()
	a := mosquittotest.Start(t)
	pubA := connect(t, a.Addr(), "pub-a")
	// Retained before the bridge exists: it crosses when the bridge
	// subscribes, which is how the test knows the bridge is up.
	if _, err := pubA.Publish(timeout(t), &paho.Publish{QoS: 1, Retain: true, Topic: "bridged/r", Payload: []byte("early")}); err != nil {
		t.Fatal(err)
	}
	b := mosquittotest.Start(t, mosquittotest.WithBridge(a.Addr(), "bridged/#"))
	subB := connect(t, b.Addr(), "sub-b")
	subB.subscribe(t, "bridged/#")
	if got := subB.receive(t); got.Topic != "bridged/r" || string(got.Payload) != "early" {
		t.Fatalf("received %q on %q, want the retained message from A", got.Payload, got.Topic)
	}

	// A to B, live, with properties.
	expiry := uint32(30)
	props := &paho.PublishProperties{
		ResponseTopic:   "bridged/responses/x",
		CorrelationData: []byte{0, 1, 0xff},
		MessageExpiry:   &expiry,
		ContentType:     "application/json",
		User:            paho.UserProperties{{Key: "k", Value: "a"}, {Key: "k", Value: "b"}},
	}
	if _, err := pubA.Publish(timeout(t), &paho.Publish{QoS: 1, Topic: "bridged/live", Payload: []byte("live"), Properties: props}); err != nil {
		t.Fatal(err)
	}
	got := subB.receive(t)
	if got.Topic != "bridged/live" || got.Properties == nil {
		t.Fatalf("received %+v", got)
	}
	g := got.Properties
	if g.ResponseTopic != props.ResponseTopic || !bytes.Equal(g.CorrelationData, props.CorrelationData) || g.ContentType != props.ContentType ||
		g.MessageExpiry == nil || *g.MessageExpiry > expiry || *g.MessageExpiry+2 < expiry || !slices.Equal(g.User, props.User) {
		t.Errorf("properties across the bridge %+v, want %+v", g, props)
	}

	// B to A.
	subA := connect(t, a.Addr(), "sub-a")
	subA.subscribe(t, "bridged/up")
	pubB := connect(t, b.Addr(), "pub-b")
	if _, err := pubB.Publish(timeout(t), &paho.Publish{QoS: 1, Topic: "bridged/up", Payload: []byte("up")}); err != nil {
		t.Fatal(err)
	}
	if got := subA.receive(t); got.Topic != "bridged/up" || string(got.Payload) != "up" {
		t.Fatalf("A received %q on %q", got.Payload, got.Topic)
	}
	if got := subB.receive(t); got.Topic != "bridged/up" {
		t.Fatalf("B's subscriber received %q on %q, want its own broker's bridged/up", got.Payload, got.Topic)
	}

	// A retained message published on A while bridged is retained on B too.
	if _, err := pubA.Publish(timeout(t), &paho.Publish{QoS: 1, Retain: true, Topic: "bridged/r", Payload: []byte("late")}); err != nil {
		t.Fatal(err)
	}
	if got := subB.receive(t); string(got.Payload) != "late" {
		t.Fatalf("received %q, want the new retained message", got.Payload)
	}
	late := connect(t, b.Addr(), "late-b")
	late.subscribe(t, "bridged/r")
	if got := late.receive(t); string(got.Payload) != "late" || !got.Retain {
		t.Errorf("a new subscriber on B got %q (retain %t), want the retained \"late\"", got.Payload, got.Retain)
	}

	// Nothing else crosses: on B nobody subscribes to other/x, and the
	// bridge does not either, so B says no matching subscribers.
	resp, err := pubB.Publish(timeout(t), &paho.Publish{QoS: 1, Topic: "other/x", Payload: []byte("x")})
	if err != nil || resp.ReasonCode != 0x10 {
		t.Errorf("publish outside the bridged topics: %v, %+v; want reason 0x10", err, resp)
	}
	// Over the bridge, B answers 0x00 for a bridged topic that nobody on
	// A subscribes to: the bridge is a subscriber.
	resp, err = pubB.Publish(timeout(t), &paho.Publish{QoS: 1, Topic: "bridged/nobody", Payload: []byte("x")})
	if err != nil || resp.ReasonCode != 0 {
		t.Errorf("publish to a bridged topic nobody reads: %v, %+v; want reason 0x00", err, resp)
	}
}
