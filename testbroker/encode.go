package testbroker

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// OnPacketEncode corrects mochi's outgoing packets just before they are encoded.
func (h *faultHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Connack:
		if h.maxPacketSize > 0 {
			pk.Properties.MaximumPacketSize = h.maxPacketSize // mochi enforces it without saying so
		}
	case packets.Publish:
		return correctPublish(pk)
	case packets.Puback, packets.Pubrec, packets.Pubrel, packets.Pubcomp:
		return h.correctAck(cl, pk)
	}
	return pk
}

// correctPublish keeps user properties and sets DUP on duplicated copies.
func correctPublish(pk packets.Packet) packets.Packet {
	// mochi drops user properties from every packet, PUBLISH included, for a
	// client that set Request Problem Information to 0 (autopaho does whenever
	// SessionExpiryInterval is set); MQTT 5 exempts PUBLISH from that setting.
	pk.Mods.DisallowProblemInfo = false
	// DUP is meaningless at QoS 0, where it must stay clear [MQTT-3.3.1-2].
	pk.FixedHeader.Dup = pk.FixedHeader.Qos > 0 && (pk.FixedHeader.Dup || pk.Connect.WillTopic == tagDuplicateCopy)
	return pk
}

// correctAck fixes PUBACK, PUBREC, PUBREL and PUBCOMP: a valid reason code,
// no properties copied from the PUBLISH, and reason codes set by RejectPublishes.
func (h *faultHook) correctAck(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	reason := pk.ReasonCode
	if pk.FixedHeader.Type == packets.Puback && reason == packets.CodeGrantedQos1.Code {
		// mochi acknowledges QoS 1 with 0x01 "granted QoS 1", a SUBACK code
		// that is invalid in a PUBACK (mqtt.js rejects it).
		reason = packets.CodeSuccess.Code
	}
	props := packets.Properties{}
	if reason >= packets.ErrUnspecifiedError.Code {
		props.ReasonString = pk.Properties.ReasonString
	}
	if pk.FixedHeader.Type == packets.Puback || pk.FixedHeader.Type == packets.Pubrec {
		if injected, ok := h.takeAckReason(cl, pk.PacketID); ok && reason < packets.ErrUnspecifiedError.Code {
			reason = injected
			// mochi writes a reason code below 0x80 only when the ack has a
			// property, so it gets a reason string even for a client that asked
			// for no problem information.
			props.ReasonString = reasonString(injected)
			pk.Mods.DisallowProblemInfo = false
		}
	}
	pk.ReasonCode = reason
	pk.Properties = props
	return pk
}

// reasonString describes a success reason code injected by RejectPublishes.
func reasonString(reason byte) string {
	if reason == packets.CodeNoMatchingSubscribers.Code {
		return packets.CodeNoMatchingSubscribers.Reason
	}
	return "set by testbroker fault injection"
}
