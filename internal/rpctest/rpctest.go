// Package rpctest holds what the tests of rpc and rpc/otelrpc share: the
// brokers they run against (testbroker and Mosquitto), a bare MQTT client
// that stands for any foreign caller or responder, and small helpers. It is
// for tests only.
package rpctest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/internal/mosquittotest"
	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// Broker is a broker under test: testbroker or Mosquitto.
type Broker struct {
	Name string
	URL  string
	TB   *testbroker.Broker    // nil for Mosquitto
	MQ   *mosquittotest.Broker // nil for testbroker
}

// EachBroker runs f against testbroker and against Mosquitto, in parallel
// subtests. The Mosquitto subtest skips when Mosquitto is not installed,
// unless MQTTRPC_REQUIRE_MOSQUITTO=1.
func EachBroker(t *testing.T, f func(t *testing.T, b *Broker)) {
	t.Helper()
	t.Run("testbroker", func(t *testing.T) {
		t.Parallel()
		f(t, NewTestbroker(t))
	})
	t.Run("mosquitto", func(t *testing.T) {
		t.Parallel()
		f(t, NewMosquitto(t))
	})
}

// NewTestbroker starts an embedded broker, stopped at cleanup.
func NewTestbroker(t *testing.T) *Broker {
	tb := testbroker.Start(t)
	return &Broker{Name: "testbroker", URL: tb.URL(), TB: tb}
}

// NewMosquitto starts a Mosquitto on a free loopback port, stopped at
// cleanup.
func NewMosquitto(t *testing.T) *Broker {
	mq := mosquittotest.Start(t)
	return &Broker{Name: "mosquitto", URL: mq.URL(), MQ: mq}
}

// Context returns a context that ends after d or at cleanup.
func Context(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

var idSeq atomic.Int64

// UniqueID returns prefix followed by a number unique in the process.
func UniqueID(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, idSeq.Add(1))
}

// Dial connects to the broker and closes the connection at cleanup.
func Dial(t *testing.T, url string, opts ...rpc.ConnOption) *rpc.Conn {
	t.Helper()
	conn, err := rpc.Dial(Context(t, 30*time.Second), url, opts...)
	if err != nil {
		t.Fatalf("Dial(%s): %v", url, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// WaitFor polls cond until it holds, failing the test after 20 s. It is
// for conditions that no event announces (counters, spans ended after the
// caller has its answer); the bound only guards against hangs.
func WaitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// RawClient is a bare paho client that knows nothing of mqttrpc: it stands
// for any MQTT 5 client that calls a server or answers a call, following
// docs/protocol.md alone.
type RawClient struct {
	*paho.Client
	received chan *paho.Publish
	closing  chan struct{} // closed at cleanup: what arrives then is dropped
}

// NewRawClient connects a RawClient with a clean session; it disconnects
// at cleanup.
func NewRawClient(t *testing.T, brokerURL, clientID string) *RawClient {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(brokerURL, "mqtt://"))
	if err != nil {
		t.Fatal(err)
	}
	return NewRawClientConn(t, conn, &paho.Connect{ClientID: clientID, CleanStart: true, KeepAlive: 30})
}

// NewRawClientConn connects a RawClient over conn (TLS, say) with the given
// CONNECT; it disconnects at cleanup. paho serialises its writes only on a
// connection that is a sync.Locker: wrap a TLS connection in
// packets.NewThreadSafeConn.
func NewRawClientConn(t *testing.T, conn net.Conn, connect *paho.Connect) *RawClient {
	t.Helper()
	rc := &RawClient{received: make(chan *paho.Publish, 16), closing: make(chan struct{})}
	rc.Client = paho.NewClient(paho.ClientConfig{
		Conn:     conn,
		ClientID: connect.ClientID,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			select {
			case rc.received <- pr.Packet:
			case <-rc.closing:
				// A test that failed stopped reading: Disconnect waits
				// for this router, which must not block.
			}
			return true, nil
		}},
	})
	if _, err := rc.Connect(Context(t, 30*time.Second), connect); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		close(rc.closing)
		_ = rc.Disconnect(&paho.Disconnect{})
	})
	return rc
}

// SubscribeTo subscribes to filter with maximum QoS 2.
func (rc *RawClient) SubscribeTo(t *testing.T, filter string) {
	t.Helper()
	if _, err := rc.Subscribe(Context(t, 30*time.Second), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 2}}}); err != nil {
		t.Fatal(err)
	}
}

// PublishTo publishes payload on topic at QoS 1 with props.
func (rc *RawClient) PublishTo(t *testing.T, topic string, props *paho.PublishProperties, payload string) {
	t.Helper()
	if _, err := rc.Publish(Context(t, 30*time.Second), &paho.Publish{Topic: topic, QoS: 1, Properties: props, Payload: []byte(payload)}); err != nil {
		t.Fatal(err)
	}
}

// Next returns the next message received, or nil after wait.
func (rc *RawClient) Next(wait time.Duration) *paho.Publish {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case p := <-rc.received:
		return p
	case <-timer.C:
		return nil
	}
}
