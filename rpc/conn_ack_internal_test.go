package rpc

import (
	"context"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/internal/mosquittotest"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// hangGuard bounds waits that only a bug makes long.
const hangGuard = 15 * time.Second

// eachBrokerURL runs f against testbroker and Mosquitto (the internal
// tests' eachBroker).
func eachBrokerURL(t *testing.T, f func(t *testing.T, url string)) {
	t.Run("testbroker", func(t *testing.T) {
		t.Parallel()
		f(t, testbroker.Start(t).URL())
	})
	t.Run("mosquitto", func(t *testing.T) {
		t.Parallel()
		f(t, mosquittotest.Start(t).URL())
	})
}

// wireConn is a client connection that reports the packet identifiers of
// the PUBACKs the client writes, and that the test can cut.
type wireConn struct {
	net.Conn
	pubacks chan<- uint16

	mu  sync.Mutex
	buf []byte // written bytes not yet parsed into whole packets
}

func (w *wireConn) Write(p []byte) (int, error) {
	n, err := w.Conn.Write(p)
	w.mu.Lock()
	w.buf = append(w.buf, p[:n]...)
	for {
		size, ok := packetSize(w.buf)
		if !ok {
			break
		}
		if w.buf[0]>>4 == 4 && size >= 4 { // PUBACK
			hdr := size - remainingLength(w.buf)
			w.pubacks <- uint16(w.buf[hdr])<<8 | uint16(w.buf[hdr+1])
		}
		w.buf = w.buf[size:]
	}
	w.mu.Unlock()
	return n, err
}

// packetSize returns the size of the MQTT packet at the start of b, if b
// holds all of it.
func packetSize(b []byte) (int, bool) {
	length, mult := 0, 1
	for i := 1; i < len(b) && i <= 4; i++ {
		length += int(b[i]&0x7f) * mult
		mult *= 128
		if b[i]&0x80 == 0 {
			size := 1 + i + length
			return size, len(b) >= size
		}
	}
	return 0, false
}

// remainingLength returns the remaining length of the packet at b[0].
func remainingLength(b []byte) int {
	length, mult := 0, 1
	for i := 1; i < len(b); i++ {
		length += int(b[i]&0x7f) * mult
		mult *= 128
		if b[i]&0x80 == 0 {
			break
		}
	}
	return length
}

// A request that a persistent session redelivers right after CONNACK is
// routed before autopaho runs OnConnectionUp. Acknowledged from there, the
// ack must reach the broker, and so must the acks of the packets behind it
// (paho acknowledges in order).
func TestConnAckOfRedeliveryBeforeConnectionUp(t *testing.T) {
	t.Parallel()
	eachBrokerURL(t, func(t *testing.T, brokerURL string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*hangGuard)
		defer cancel()
		u, err := url.Parse(brokerURL)
		if err != nil {
			t.Fatal(err)
		}

		pubacks := make(chan uint16, 100)
		var connsMu sync.Mutex
		var current *wireConn
		entered := make(chan struct{}, 1)
		release := make(chan struct{})
		var hold sync.Once
		holding := make(chan struct{}) // closed when the next connectionUp must wait
		beforeUp := func() {
			select {
			case <-holding:
			default:
				return
			}
			hold.Do(func() {
				entered <- struct{}{}
				select {
				case <-release:
				case <-time.After(hangGuard):
				}
			})
		}
		clientID := "acker-" + strings.ReplaceAll(t.Name(), "/", "-")
		cfg := autopaho.ClientConfig{
			ServerUrls:                    []*url.URL{u},
			KeepAlive:                     30,
			CleanStartOnInitialConnection: true,
			SessionExpiryInterval:         60,
			ReconnectBackoff:              autopaho.NewConstantBackoff(10 * time.Millisecond),
			ConnectTimeout:                5 * time.Second,
			ClientConfig:                  paho.ClientConfig{ClientID: clientID, EnableManualAcknowledgment: true},
			AttemptConnection: func(ctx context.Context, _ autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
				var d net.Dialer
				nc, err := d.DialContext(ctx, "tcp", u.Host)
				if err != nil {
					return nil, err
				}
				wc := &wireConn{Conn: nc, pubacks: pubacks}
				connsMu.Lock()
				current = wc
				connsMu.Unlock()
				return wc, nil
			},
		}
		conn, err := newConn(cfg, &connConfig{logger: discardLogger(), beforeUp: beforeUp}, true)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = conn.Close(context.Background()) }()
		if err := conn.AwaitConnection(ctx); err != nil {
			t.Fatal(err)
		}

		type delivery struct {
			p   *paho.Publish
			ack func()
		}
		got := make(chan delivery, 10)
		remove := conn.addListener(func(p *paho.Publish, ack func()) bool {
			if !strings.HasPrefix(p.Topic, "acks/") {
				return false
			}
			got <- delivery{p, ack}
			return true
		})
		defer remove()
		if err := conn.subscribe(ctx, []paho.SubscribeOptions{{Topic: "acks/#", QoS: 1}}); err != nil {
			t.Fatal(err)
		}

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
		receive := func() delivery {
			t.Helper()
			select {
			case d := <-got:
				return d
			case <-time.After(hangGuard):
				t.Fatal("no delivery")
				return delivery{}
			}
		}
		waitPuback := func(id uint16) {
			t.Helper()
			timeout := time.After(hangGuard)
			for {
				select {
				case got := <-pubacks:
					if got == id {
						return
					}
				case <-timeout:
					t.Fatalf("no PUBACK for packet %d written within %v", id, hangGuard)
				}
			}
		}

		// Delivered, not acknowledged; then the connection breaks, and
		// the broker redelivers it on the next one.
		publish("acks/1")
		first := receive()
		close(holding)
		connsMu.Lock()
		_ = current.Conn.Close()
		connsMu.Unlock()

		redelivered := receive()
		select {
		case <-entered: // CONNACK is processed, OnConnectionUp waits
		case <-time.After(hangGuard):
			t.Fatal("the reconnection never reached OnConnectionUp")
		}
		if redelivered.p.Topic != "acks/1" {
			t.Fatalf("redelivered %q", redelivered.p.Topic)
		}
		redelivered.ack() // before OnConnectionUp, as a fast handler would
		first.ack()       // of the old connection: ignored
		close(release)
		waitPuback(redelivered.p.PacketID)

		// Later packets are acknowledged too.
		publish("acks/2")
		second := receive()
		second.ack()
		waitPuback(second.p.PacketID)
	})
}
