package testbroker_test

import (
	"testing"

	"github.com/eclipse/paho.golang/packets"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// publishRaw sends a PUBLISH carrying properties an ack must not inherit.
func publishRaw(t *testing.T, rc *rawConn, topic string, qos byte, packetID uint16) {
	t.Helper()
	cp := packets.NewControlPacket(packets.PUBLISH)
	pub := cp.Content.(*packets.Publish)
	pub.Topic, pub.QoS, pub.PacketID, pub.Payload = topic, qos, packetID, []byte("x")
	pub.Properties = &packets.Properties{
		ContentType:     "application/json",
		ResponseTopic:   "replies/me",
		CorrelationData: []byte{1, 2, 3},
		User:            []packets.User{{Key: "k", Value: "v"}},
	}
	rc.write(t, cp)
}

// checkAck reads an ack and checks its packet ID, reason code and properties.
func checkAck(t *testing.T, rc *rawConn, ackType byte, packetID uint16, wantReason byte, wantReasonString bool) {
	t.Helper()
	first, body := rc.read(t, ackType)
	if got := uint16(body[0])<<8 | uint16(body[1]); got != packetID {
		t.Fatalf("ack for packet %d, want %d", got, packetID)
	}
	reason, props := decodeAck(t, first, body)
	if reason != wantReason {
		t.Errorf("reason code 0x%02x (body % x), want 0x%02x", reason, body, wantReason)
	}
	if len(props.User) > 0 {
		t.Errorf("ack carries user properties %v", props.User)
	}
	if (props.ReasonString != "") != wantReasonString {
		t.Errorf("ack reason string %q, want one: %v", props.ReasonString, wantReasonString)
	}
	if wantReason == 0 && len(body) > 2 && (body[2] != 0 || len(body) > 4 || (len(body) == 4 && body[3] != 0)) {
		t.Errorf("success ack has extra bytes: % x", body)
	}
}

func TestPubackIsSuccessWithoutInheritedProperties(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	rc := dialRaw(t, broker.Addr(), "raw-puback")
	publishRaw(t, rc, "acks/qos1", 1, 7)
	checkAck(t, rc, packets.PUBACK, 7, 0x00, false)
}

func TestPubrecIsSuccessWithoutInheritedProperties(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	rc := dialRaw(t, broker.Addr(), "raw-pubrec")
	publishRaw(t, rc, "acks/qos2", 2, 9)
	checkAck(t, rc, packets.PUBREC, 9, 0x00, false)
}

func TestRejectSetsAckReasonCode(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	rc := dialRaw(t, broker.Addr(), "raw-reject")

	broker.RejectPublishes("acks/#", 1, 0x10)
	publishRaw(t, rc, "acks/none", 1, 1)
	checkAck(t, rc, packets.PUBACK, 1, 0x10, true)

	broker.RejectPublishes("acks/#", 1, 0x87)
	publishRaw(t, rc, "acks/denied", 1, 2)
	checkAck(t, rc, packets.PUBACK, 2, 0x87, true)

	broker.RejectPublishes("acks/#", 1, 0x97)
	publishRaw(t, rc, "acks/quota", 2, 3)
	checkAck(t, rc, packets.PUBREC, 3, 0x97, true)

	publishRaw(t, rc, "acks/normal", 1, 4) // the rules are used up
	checkAck(t, rc, packets.PUBACK, 4, 0x00, false)
}
