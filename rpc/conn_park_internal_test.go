package rpc

import (
	"context"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

// ackWait bounds the wait for an acknowledgement that should be written at
// once; unclaimed packets used to be held for parkTime (10 s).
const ackWait = 5 * time.Second

// With acknowledgements after handling, a packet nobody claims on a topic
// that a subscription of the Conn covers is acknowledged at once (its
// listener had its chance), and so are parked packets once a subscription
// comes to cover them; they no longer hold back the acknowledgements behind
// them for parkTime.
func TestConnUnclaimedCoveredPacketsAckedAtOnce(t *testing.T) {
	t.Parallel()
	eachBrokerURL(t, func(t *testing.T, brokerURL string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*hangGuard)
		defer cancel()
		u, err := url.Parse(brokerURL)
		if err != nil {
			t.Fatal(err)
		}
		pubacks := make(chan uint16, 100)
		clientID := "parker-" + strings.ReplaceAll(t.Name(), "/", "-")
		cfg := autopaho.ClientConfig{
			ServerUrls:                    []*url.URL{u},
			KeepAlive:                     30,
			CleanStartOnInitialConnection: true,
			SessionExpiryInterval:         60,
			ConnectTimeout:                5 * time.Second,
			ClientConfig:                  paho.ClientConfig{ClientID: clientID, EnableManualAcknowledgment: true},
			AttemptConnection: func(ctx context.Context, _ autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
				var d net.Dialer
				nc, err := d.DialContext(ctx, "tcp", u.Host)
				if err != nil {
					return nil, err
				}
				return &wireConn{Conn: nc, pubacks: pubacks}, nil
			},
		}
		parkedCounts := make(chan int, 100)
		conn, err := newConn(cfg, &connConfig{logger: discardLogger(), onParked: func(n int) { parkedCounts <- n }}, true)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = conn.Close(context.Background()) }()
		if err := conn.AwaitConnection(ctx); err != nil {
			t.Fatal(err)
		}
		// A listener that wants nothing, as a Server does for topics of
		// services it does not have.
		defer conn.addListener(func(*paho.Publish, func()) bool { return false })()

		pub, err := Dial(ctx, brokerURL, WithClientID(clientID+"-pub"))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = pub.Close(context.Background()) }()
		publish := func(topic string) {
			t.Helper()
			if _, err := pub.Manager().Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte("x")}); err != nil {
				t.Fatal(err)
			}
		}
		waitPubacks := func(n int, what string) {
			t.Helper()
			timeout := time.After(ackWait)
			for range n {
				select {
				case <-pubacks:
				case <-timeout:
					t.Fatalf("%s: not acknowledged within %v", what, ackWait)
				}
			}
		}

		// Covered by a subscription of the Conn, claimed by nobody.
		if err := conn.subscribe(ctx, []paho.SubscribeOptions{{Topic: "covered/+", QoS: 1}}); err != nil {
			t.Fatal(err)
		}
		publish("covered/1")
		waitPubacks(1, "an unclaimed packet on a covered topic")

		// Not covered (the application's own subscription): parked for a
		// listener to come, until a subscription of the Conn covers it.
		if _, err := conn.Manager().Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "later/+", QoS: 1}}}); err != nil {
			t.Fatal(err)
		}
		publish("later/1")
		for parked := 0; parked != 1; {
			select {
			case parked = <-parkedCounts:
			case id := <-pubacks:
				t.Fatalf("packet %d acknowledged, want it parked", id)
			case <-ctx.Done():
				t.Fatal("never parked")
			}
		}
		if err := conn.subscribe(ctx, []paho.SubscribeOptions{{Topic: "later/+", QoS: 1}}); err != nil {
			t.Fatal(err)
		}
		waitPubacks(1, "a parked packet once a subscription covers it")
	})
}
