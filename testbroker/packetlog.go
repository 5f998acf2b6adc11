package testbroker

import (
	"bytes"
	"encoding/hex"
	"log/slog"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// packetLogHook logs every packet a client sends and the broker sends to a
// client (WithPacketLog): its type, the client, and for a PUBLISH its
// topic, QoS, packet ID, size and properties. Payloads, passwords and Will
// payloads are never logged.
type packetLogHook struct {
	mqtt.HookBase
	log *slog.Logger
}

// ID names the hook for mochi.
func (h *packetLogHook) ID() string { return "testbroker-packet-log" }

// Provides tells mochi which hook methods to call.
func (h *packetLogHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnPacketRead, mqtt.OnPacketSent}, []byte{b})
}

// OnPacketRead logs a packet from a client.
func (h *packetLogHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	h.logPacket("received", cl, pk)
	return pk, nil
}

// OnPacketSent logs a packet to a client.
func (h *packetLogHook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	h.logPacket("sent", cl, pk)
}

func (h *packetLogHook) logPacket(direction string, cl *mqtt.Client, pk packets.Packet) {
	attrs := []any{"client", cl.ID, "type", packets.PacketNames[pk.FixedHeader.Type]}
	switch pk.FixedHeader.Type {
	case packets.Connect:
		attrs = append(attrs, "client_id", string(pk.Connect.ClientIdentifier), "keepalive", pk.Connect.Keepalive, "clean", pk.Connect.Clean)
		if pk.Connect.WillFlag {
			attrs = append(attrs, "will_topic", pk.Connect.WillTopic, "will_retain", pk.Connect.WillRetain)
		}
	case packets.Publish:
		attrs = append(attrs, "topic", pk.TopicName, "qos", pk.FixedHeader.Qos, "retain", pk.FixedHeader.Retain, "dup", pk.FixedHeader.Dup, "bytes", len(pk.Payload))
		if pk.PacketID != 0 {
			attrs = append(attrs, "id", pk.PacketID)
		}
		if rt := pk.Properties.ResponseTopic; rt != "" {
			attrs = append(attrs, "response_topic", rt)
		}
		if len(pk.Properties.CorrelationData) > 0 {
			attrs = append(attrs, "correlation", hex.EncodeToString(pk.Properties.CorrelationData))
		}
		if pk.Properties.MessageExpiryInterval > 0 {
			attrs = append(attrs, "expiry", pk.Properties.MessageExpiryInterval)
		}
		if ct := pk.Properties.ContentType; ct != "" {
			attrs = append(attrs, "content_type", ct)
		}
		for _, u := range pk.Properties.User {
			attrs = append(attrs, "user."+u.Key, u.Val)
		}
	case packets.Puback, packets.Pubrec, packets.Pubrel, packets.Pubcomp:
		attrs = append(attrs, "id", pk.PacketID, "reason", pk.ReasonCode)
	case packets.Subscribe, packets.Unsubscribe:
		for _, f := range pk.Filters {
			attrs = append(attrs, "filter", f.Filter)
		}
	case packets.Suback, packets.Unsuback:
		reasons := make([]int, len(pk.ReasonCodes))
		for i, r := range pk.ReasonCodes {
			reasons[i] = int(r)
		}
		attrs = append(attrs, "id", pk.PacketID, "reasons", reasons)
	case packets.Connack, packets.Disconnect:
		attrs = append(attrs, "reason", pk.ReasonCode)
	}
	h.log.Info("packet "+direction, attrs...)
}
