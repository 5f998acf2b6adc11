package rpc

import (
	"errors"
	"fmt"

	"github.com/eclipse/paho.golang/autopaho"
)

// connackReasonTexts names the CONNACK reason codes.
var connackReasonTexts = map[byte]string{
	0x80: "unspecified error",
	0x81: "malformed packet",
	0x82: "protocol error",
	0x83: "implementation specific error",
	0x84: "unsupported protocol version",
	0x85: "client identifier not valid",
	0x86: "bad user name or password",
	0x87: "not authorized",
	0x88: "server unavailable",
	0x89: "server busy",
	0x8A: "banned",
	0x8C: "bad authentication method",
	0x90: "topic name invalid",
	0x95: "packet too large",
	0x97: "quota exceeded",
	0x99: "payload format invalid",
	0x9A: "retain not supported",
	0x9B: "QoS not supported",
	0x9C: "use another server",
	0x9D: "server moved",
	0x9F: "connection rate exceeded",
}

// connackCodes are the CONNACK refusals that retrying does not cure, and
// their codes.
var connackCodes = map[byte]Code{
	0x84: FailedPrecondition, // the broker does not speak MQTT 5
	0x85: InvalidArgument,
	0x86: Unauthenticated,
	0x87: PermissionDenied,
	0x8A: PermissionDenied,
	0x8C: Unauthenticated,
}

// refusal returns the error for a permanent CONNACK refusal, or nil.
func refusal(broker string, err error) *Error {
	var ce *autopaho.ConnackError
	if !errors.As(err, &ce) {
		return nil
	}
	code, permanent := connackCodes[ce.ReasonCode]
	if !permanent {
		return nil
	}
	return Errorf(code, "broker %s refused the connection: %s", broker, describeConnectError(err))
}

// describeConnectError says in words why a connect attempt failed.
func describeConnectError(err error) string {
	var ce *autopaho.ConnackError
	if !errors.As(err, &ce) {
		return err.Error()
	}
	text, ok := connackReasonTexts[ce.ReasonCode]
	if !ok {
		text = "refused"
	}
	msg := fmt.Sprintf("%s (CONNACK 0x%02x)", text, ce.ReasonCode)
	if ce.Reason != "" {
		msg += ": " + ce.Reason
	}
	return msg
}

// disconnectReasonText names the reason of a DISCONNECT from the broker.
func disconnectReasonText(reason byte) string {
	switch reason {
	case 0x8B:
		return "server shutting down"
	case 0x8D:
		return "keep alive timeout"
	case 0x8E:
		return "session taken over"
	case 0x81:
		return "malformed packet"
	case 0x82:
		return "protocol error"
	case 0x93:
		return "receive maximum exceeded"
	case 0x96:
		return "message rate too high"
	case 0x98:
		return "administrative action"
	}
	if s, ok := connackReasonTexts[reason]; ok {
		return s
	}
	return reasonText(reason)
}

// codeForReason maps the reason code of a PUBACK or PUBREC: 0x10 (no
// matching subscribers) and the transient failures are Unavailable, so that
// a retry may succeed.
func codeForReason(reason byte) Code {
	switch reason {
	case 0x87:
		return PermissionDenied
	case 0x97, 0x95: // 0x95 is no PUBACK reason in MQTT 5, but brokers send it
		return ResourceExhausted
	case 0x90, 0x99:
		return InvalidArgument
	}
	return Unavailable // 0x10, 0x80, 0x83, 0x91
}

// subackCode maps a refusal in a SUBACK or UNSUBACK. None is Unavailable:
// that code means "not connected yet, try later", and a Server that took a
// refusal for it would start deaf.
func subackCode(reason byte) Code {
	switch reason {
	case 0x87:
		return PermissionDenied
	case 0x8F:
		return InvalidArgument
	case 0x97:
		return ResourceExhausted
	case 0x9E, 0xA1, 0xA2: // the broker lacks a feature the filter needs
		return FailedPrecondition
	case 0x91:
		return Internal // a packet identifier paho should not have reused
	}
	return Unknown // 0x80 unspecified, 0x83 implementation specific, the rest
}

// subackText says a SUBACK or UNSUBACK refusal in words.
func subackText(reason byte) string {
	switch reason {
	case 0x9E:
		return "the broker does not support shared subscriptions (needed by share groups: WithShareGroup, ToAny)"
	case 0xA1:
		return "the broker does not support subscription identifiers"
	case 0xA2:
		return "the broker does not support wildcard subscriptions"
	}
	return reasonText(reason)
}

var reasonTexts = map[byte]string{
	0x10: "no matching subscribers",
	0x11: "no subscription existed",
	0x80: "unspecified error",
	0x83: "implementation specific error",
	0x87: "not authorized",
	0x8F: "topic filter invalid",
	0x90: "topic name invalid",
	0x91: "packet identifier in use",
	0x95: "packet too large",
	0x97: "quota exceeded",
	0x99: "payload format invalid",
	0x9E: "shared subscriptions not supported",
	0xA1: "subscription identifiers not supported",
	0xA2: "wildcard subscriptions not supported",
}

func reasonText(reason byte) string {
	if s, ok := reasonTexts[reason]; ok {
		return s
	}
	return fmt.Sprintf("reason 0x%02x", reason)
}
