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
