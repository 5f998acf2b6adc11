package testbroker_test

import (
	"io"
	"testing"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// floodCount messages of floodSize bytes are 16 MiB, far more than the
// loopback TCP buffers of a connection hold.
const (
	floodCount = 64
	floodSize  = 256 << 10
)

// subscribeRaw subscribes a raw connection to filter at QoS 1.
func subscribeRaw(t *testing.T, rc *rawConn, filter string) {
	t.Helper()
	cp := packets.NewControlPacket(packets.SUBSCRIBE)
	sub := cp.Content.(*packets.Subscribe)
	sub.PacketID = 1
	sub.Subscriptions = []packets.SubOptions{{Topic: filter, QoS: 1}}
	rc.write(t, cp)
	rc.read(t, packets.SUBACK)
}

// readType reads one packet and returns its type, discarding the body.
func readType(t *testing.T, rc *rawConn) byte {
	t.Helper()
	var first [1]byte
	if _, err := io.ReadFull(rc.Conn, first[:]); err != nil {
		t.Fatal(err)
	}
	length, multiplier := 0, 1
	for {
		var b [1]byte
		if _, err := io.ReadFull(rc.Conn, b[:]); err != nil {
			t.Fatal(err)
		}
		length += int(b[0]&0x7f) * multiplier
		if b[0]&0x80 == 0 {
			break
		}
		multiplier *= 128
	}
	if _, err := io.CopyN(io.Discard, rc.Conn, int64(length)); err != nil {
		t.Fatal(err)
	}
	return first[0] >> 4
}

// A client that publishes while it does not read gets its publishes read
// all the same. mochi writes the PUBACK of each PUBLISH it reads under the
// client's lock, which its writer holds while blocked writing to a client
// that does not read: it stopped reading the client, whose writes then
// blocked until the deadline of the raw connection (hangGuard). A client
// that reads only once its writes are through, as paho's reader does when
// its session lock is held by a PUBACK write, wedged with the broker.
func TestBrokerReadsClientThatDoesNotRead(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	rc := dialRaw(t, broker.Addr(), "echo-self")
	subscribeRaw(t, rc, "flood/#")
	payload := make([]byte, floodSize)
	for i := range floodCount {
		cp := packets.NewControlPacket(packets.PUBLISH)
		pub := cp.Content.(*packets.Publish)
		pub.Topic, pub.QoS, pub.PacketID, pub.Payload = "flood/self", 1, uint16(i+1), payload
		rc.write(t, cp) // fails at hangGuard if the broker stopped reading
	}
	counts := map[byte]int{}
	for range 2 * floodCount {
		switch typ := readType(t, rc); typ {
		case packets.PUBACK, packets.PUBLISH:
			counts[typ]++
		default:
			t.Fatalf("received packet type %d", typ)
		}
	}
	if counts[packets.PUBACK] != floodCount || counts[packets.PUBLISH] != floodCount {
		t.Errorf("received %d PUBACKs and %d PUBLISHes, want %d of each", counts[packets.PUBACK], counts[packets.PUBLISH], floodCount)
	}
}

// A subscriber that does not read holds up no publisher. mochi gives each
// message for a subscriber its packet ID under the subscriber's lock, which
// its writer holds while blocked writing to it: the publisher's reader
// stopped, and with it the publisher's PUBACKs.
func TestSubscriberThatDoesNotReadHoldsUpNobody(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	deaf := dialRaw(t, broker.Addr(), "deaf")
	subscribeRaw(t, deaf, "flood/#") // and reads nothing more
	watcher := connect(t, broker.Addr(), "watcher")
	watcher.subscribe(t, paho.SubscribeOptions{Topic: "flood/#", QoS: 1})
	pub := connect(t, broker.Addr(), "flooder")
	payload := make([]byte, floodSize)
	for i := range floodCount {
		if resp := pub.publish(t, &paho.Publish{Topic: "flood/x", QoS: 1, Payload: payload}); resp.ReasonCode != 0 {
			t.Fatalf("publish %d: reason 0x%02x", i, resp.ReasonCode)
		}
		if got := watcher.receive(t); len(got.Payload) != floodSize {
			t.Fatalf("watcher received %d bytes, want %d", len(got.Payload), floodSize)
		}
	}
}
