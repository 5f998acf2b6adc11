package testbroker_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
)

// hangGuard bounds every wait so a broken broker fails a test instead of hanging it.
const hangGuard = 10 * time.Second

func timeout(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	t.Cleanup(cancel)
	return ctx
}

// client is a raw paho client whose received publishes arrive on a channel.
type client struct {
	*paho.Client
	id          string
	received    chan *paho.Publish
	disconnects chan *paho.Disconnect // DISCONNECT packets from the broker
}

// connect connects an MQTT 5 client with a clean start; edit adjusts CONNECT.
// The client disconnects when the test ends.
func connect(t *testing.T, addr, id string, edit ...func(*paho.Connect)) *client {
	t.Helper()
	c, _ := dial(t, addr, id, edit...)
	t.Cleanup(func() { c.close(t) })
	return c
}

// close sends DISCONNECT, closes the connection and waits for paho to stop.
func (c *client) close(t *testing.T) {
	t.Helper()
	_ = c.Disconnect(&paho.Disconnect{})
	select {
	case <-c.Done():
	case <-time.After(hangGuard):
		t.Errorf("client %s did not shut down", c.id)
	}
}

// dial connects an MQTT 5 client with a clean start, like connect, and returns
// the CONNACK. Closing the client is up to the caller.
func dial(t *testing.T, addr, id string, edit ...func(*paho.Connect)) (*client, *paho.Connack) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &client{
		id:          id,
		received:    make(chan *paho.Publish, 4096),
		disconnects: make(chan *paho.Disconnect, 1),
	}
	c.Client = paho.NewClient(paho.ClientConfig{
		ClientID: id,
		Conn:     conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			c.received <- pr.Packet
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) {
			select {
			case c.disconnects <- d:
			default:
			}
		},
	})
	cp := &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30}
	for _, e := range edit {
		e(cp)
	}
	connack, err := c.Connect(timeout(t), cp)
	if err != nil {
		_ = conn.Close()
		t.Fatalf("connect %s: %v", id, err)
	}
	return c, connack
}

func (c *client) subscribe(t *testing.T, opts ...paho.SubscribeOptions) {
	t.Helper()
	suback, err := c.Subscribe(timeout(t), &paho.Subscribe{Subscriptions: opts})
	if err != nil {
		t.Fatalf("subscribe %s: %v", c.id, err)
	}
	for i, code := range suback.Reasons {
		if code >= 0x80 {
			t.Fatalf("subscribe %s to %q: reason 0x%02x", c.id, opts[i].Topic, code)
		}
	}
}

// publish publishes and returns the broker's answer (empty for QoS 0).
func (c *client) publish(t *testing.T, p *paho.Publish) *paho.PublishResponse {
	t.Helper()
	resp, err := c.Publish(timeout(t), p)
	if err != nil && (resp == nil || resp.ReasonCode < 0x80) {
		t.Fatalf("publish %s to %q: %v", c.id, p.Topic, err)
	}
	return resp
}

// receive returns the next message the client received.
func (c *client) receive(t *testing.T) *paho.Publish {
	t.Helper()
	select {
	case p := <-c.received:
		return p
	case <-time.After(hangGuard):
		t.Fatalf("client %s received nothing within %v", c.id, hangGuard)
		return nil
	}
}

// receivePayload checks that the next message the client received has this payload.
func (c *client) receivePayload(t *testing.T, want string) *paho.Publish {
	t.Helper()
	p := c.receive(t)
	if string(p.Payload) != want {
		t.Fatalf("client %s received %q on %q, want %q", c.id, p.Payload, p.Topic, want)
	}
	return p
}

// waitFor polls cond until it holds; the hang guard bounds the wait.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rawConn speaks MQTT packets over TCP without a client library, to see
// exactly what the broker sends.
type rawConn struct {
	net.Conn
}

func dialRaw(t *testing.T, addr, id string) *rawConn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(hangGuard))
	rc := &rawConn{conn}
	connect := packets.NewControlPacket(packets.CONNECT)
	cp := connect.Content.(*packets.Connect)
	cp.ProtocolName, cp.ProtocolVersion = "MQTT", 5
	cp.ClientID, cp.CleanStart, cp.KeepAlive = id, true, 30
	rc.write(t, connect)
	if _, body := rc.read(t, packets.CONNACK); len(body) < 2 || body[1] != 0 {
		t.Fatalf("CONNACK % x", body)
	}
	return rc
}

func (rc *rawConn) write(t *testing.T, cp *packets.ControlPacket) {
	t.Helper()
	if _, err := cp.WriteTo(rc.Conn); err != nil {
		t.Fatal(err)
	}
}

// read reads one packet of the wanted type and returns its fixed header's
// first byte and its body, exactly as sent.
func (rc *rawConn) read(t *testing.T, want byte) (byte, []byte) {
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
	body := make([]byte, length)
	if _, err := io.ReadFull(rc.Conn, body); err != nil {
		t.Fatal(err)
	}
	if first[0]>>4 != want {
		t.Fatalf("received packet type %d (% x), want %d", first[0]>>4, body, want)
	}
	return first[0], body
}

// decodeAck decodes a PUBACK or PUBREC body.
func decodeAck(t *testing.T, first byte, body []byte) (reason byte, props packets.Properties) {
	t.Helper()
	raw := bytes.NewBuffer([]byte{first})
	raw.Write(encodeLength(len(body)))
	raw.Write(body)
	cp, err := packets.ReadPacket(raw)
	if err != nil {
		t.Fatalf("decode ack % x: %v", body, err)
	}
	switch ack := cp.Content.(type) {
	case *packets.Puback:
		return ack.ReasonCode, *ack.Properties
	case *packets.Pubrec:
		return ack.ReasonCode, *ack.Properties
	}
	t.Fatalf("not an ack: %T", cp.Content)
	return 0, packets.Properties{}
}

func encodeLength(n int) []byte {
	var out []byte
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			return out
		}
	}
}

func uint32p(v uint32) *uint32 { return &v }
func bytep(v byte) *byte       { return &v }

func payloads(n int, prefix string) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return out
}
