package rpc

// The wire format of streams (docs/protocol.md, "Streams"): the properties
// that tell a stream's messages apart, and the encoding of the messages
// both sides send. Stream code calls into this file and holds no wire
// details of its own.

import (
	"math"
	"strconv"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/codec"
)

// Property names of streams (MQTT user properties).
const (
	propSeq       = "mqttrpc-seq"
	propCredit    = "mqttrpc-credit"
	propWindow    = "mqttrpc-window"
	propEnd       = "mqttrpc-end"
	propKeepalive = "mqttrpc-keepalive"
	propSent      = "mqttrpc-sent"
	propAck       = "mqttrpc-ack"
	propResume    = "mqttrpc-resume"
)

const (
	// DefaultStreamWindow is the credit, in messages, that a receiver of
	// a stream grants unless WithStreamWindow says otherwise.
	DefaultStreamWindow = 128
	// openWindowDefault is the credit of an open without mqttrpc-window.
	openWindowDefault = 16
	// maxCredit is the largest credit on the wire.
	maxCredit = math.MaxInt32
)

// requestKind tells apart what arrives on a request topic.
type requestKind uint8

const (
	kindRequest       requestKind = iota // a unary request or a stream's open
	kindCancel                           // the cancel message
	kindStreamMessage                    // a stream's data, half-close or credit
)

// classifyRequest reads what a PUBLISH on a request topic is, in one pass
// over its user properties (the one pass that only looked for a cancel before streams).
func classifyRequest(p *paho.Publish) requestKind {
	if p.Properties == nil {
		return kindRequest
	}
	for _, u := range p.Properties.User {
		switch u.Key {
		case propCancel:
			if u.Value == "1" {
				return kindCancel
			}
			return kindRequest
		case propSeq, propCredit:
			return kindStreamMessage
		}
	}
	return kindRequest
}

// streamProps are the stream properties of one received message. A
// number that is absent or malformed is -1.
type streamProps struct {
	seq       int64
	credit    int64
	sent      int64 // a keepalive's count of data messages sent
	ack       int64 // the peer has every message numbered below it
	resume    bool  // the peer reconnected: resend from ack
	end       bool  // a client's half-close
	hasStatus bool  // a server's final message (or a unary answer)
	target    string
}

// readStreamProps reads the stream properties of p.
func readStreamProps(p *paho.Publish) streamProps {
	sp := streamProps{seq: -1, credit: -1, sent: -1, ack: -1}
	if p.Properties == nil {
		return sp
	}
	for _, u := range p.Properties.User {
		switch u.Key {
		case propSeq:
			sp.seq = parseCount(u.Value)
		case propCredit:
			sp.credit = parseCount(u.Value)
		case propSent:
			sp.sent = parseCount(u.Value)
		case propAck:
			sp.ack = parseCount(u.Value)
		case propResume:
			sp.resume = u.Value == "1"
		case propEnd:
			sp.end = u.Value == "1"
		case propStatus:
			sp.hasStatus = true
		case propTarget:
			sp.target = u.Value
		}
	}
	return sp
}

// parseCount reads a sequence number or a credit: a decimal from 0 to
// maxCredit, else -1.
func parseCount(s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > maxCredit {
		return -1
	}
	return n
}

// readOpen reads what a stream's open asks for: the credit it grants
// (mqttrpc-window, openWindowDefault when absent or malformed) and the
// keepalive interval (mqttrpc-keepalive, 0 when absent: no liveness).
func readOpen(p *paho.Publish) (window int64, keepalive time.Duration) {
	window = openWindowDefault
	for _, u := range p.Properties.User {
		switch u.Key {
		case propWindow:
			if n := parseCount(u.Value); n >= 0 {
				window = n
			}
		case propKeepalive:
			if ms := parseCount(u.Value); ms > 0 {
				keepalive = max(time.Duration(ms)*time.Millisecond, minStreamKeepalive)
			}
		}
	}
	return window, keepalive
}

// streamEnvelope is what every message of one stream in one direction
// has in common: where it goes and the properties that name the stream.
type streamEnvelope struct {
	qos             byte
	topic           string
	responseTopic   string // client messages only
	correlationData []byte
	contentType     string // "" for protobuf
}

// message builds one stream message: user holds the message's own
// properties (mqttrpc-seq and the like), expiry what is left of the
// stream's deadline.
func (e *streamEnvelope) message(expiry uint32, user paho.UserProperties, payload []byte) *paho.Publish {
	props := &paho.PublishProperties{
		ResponseTopic:   e.responseTopic,
		CorrelationData: e.correlationData,
		ContentType:     e.contentType,
		MessageExpiry:   &expiry,
		User:            user,
	}
	if e.contentType == codec.ContentTypeJSON && len(payload) > 0 {
		props.PayloadFormat = &payloadFormatUTF8
	}
	return &paho.Publish{QoS: e.qos, Topic: e.topic, Properties: props, Payload: payload}
}

// dataProps are the properties of data message seq.
func dataProps(seq int64, extra int) paho.UserProperties {
	user := make(paho.UserProperties, 1, 1+extra)
	user[0] = paho.UserProperty{Key: propSeq, Value: strconv.FormatInt(seq, 10)}
	return user
}

// creditProps are the properties of a credit message granting credit and
// acknowledging the messages numbered below ack (none when ack is 0).
func creditProps(credit, ack int64, target string) paho.UserProperties {
	user := make(paho.UserProperties, 1, 4)
	user[0] = paho.UserProperty{Key: propCredit, Value: strconv.FormatInt(min(credit, maxCredit), 10)}
	if ack > 0 {
		user = append(user, paho.UserProperty{Key: propAck, Value: strconv.FormatInt(ack, 10)})
	}
	if target != "" {
		user = append(user, paho.UserProperty{Key: propTarget, Value: target})
	}
	return user
}

// keepaliveProps are the properties of a keepalive: a credit message
// that repeats the credit granted, acknowledges what arrived and counts
// the data messages sent.
func keepaliveProps(credit, ack, sent int64, target string) paho.UserProperties {
	return append(creditProps(credit, ack, target), paho.UserProperty{Key: propSent, Value: strconv.FormatInt(sent, 10)})
}

// resumeProps are the properties of the credit message a side sends on
// each of its streams after it reconnected: resend from ack.
func resumeProps(credit, ack int64, target string) paho.UserProperties {
	return append(creditProps(credit, ack, target), paho.UserProperty{Key: propResume, Value: "1"})
}

// halfCloseProps are the properties of a client's half-close, the seq-th
// message of its direction.
func halfCloseProps(seq int64) paho.UserProperties {
	return paho.UserProperties{{Key: propSeq, Value: strconv.FormatInt(seq, 10)}, {Key: propEnd, Value: "1"}}
}

// finalProps are the properties of a server's final message, the seq-th
// of its direction: mqttrpc-status always, OK included.
func finalProps(seq int64, err *Error, headers []userProperty, trailers []userProperty) paho.UserProperties {
	user := make(paho.UserProperties, 0, 3+len(headers)+len(trailers))
	user = append(user, paho.UserProperty{Key: propSeq, Value: strconv.FormatInt(seq, 10)})
	code := OK
	if err != nil {
		code = err.Code()
	}
	user = append(user, paho.UserProperty{Key: propStatus, Value: strconv.FormatUint(uint64(code), 10)})
	if err != nil && err.Message() != "" {
		user = append(user, paho.UserProperty{Key: propMessage, Value: encodeStatusMessage(err.Message())})
	}
	for _, u := range headers {
		user = append(user, paho.UserProperty{Key: u.key, Value: u.value})
	}
	for _, u := range trailers {
		user = append(user, paho.UserProperty{Key: u.key, Value: u.value})
	}
	return user
}

// readStatus reads the status of a final message or a unary answer, and
// its other user properties into md. An absent status is OK.
func readStatus(p *paho.Publish, md Metadata) *Error {
	code, message := OK, ""
	for _, u := range p.Properties.User {
		switch u.Key {
		case propStatus:
			var ok bool
			if code, ok = parseStatus(u.Value); !ok {
				return Errorf(Internal, "stream message has a malformed %s %q", propStatus, u.Value)
			}
		case propMessage:
			message = decodeStatusMessage(u.Value)
		default:
			if !isReservedKey(u.Key) {
				md.Add(u.Key, decodeMetadataValue(u.Key, u.Value))
			}
		}
	}
	if code == OK {
		return nil
	}
	e := Errorf(code, "%s", message)
	e.wire = true
	if len(md) > 0 {
		e.meta = md.Clone()
	}
	return e
}

// readMetadata puts the application's user properties of p into md.
func readMetadata(p *paho.Publish, md Metadata) {
	for _, u := range p.Properties.User {
		if !isReservedKey(u.Key) {
			md.Add(u.Key, decodeMetadataValue(u.Key, u.Value))
		}
	}
}

// decodePayload decodes a stream message's payload into msg with the
// stream's codec, or the codec its ContentType names.
func decodePayload(streamCodec codec.Codec, p *paho.Publish, msg any, maxPayload int) error {
	if len(p.Payload) > maxPayload {
		return Errorf(ResourceExhausted, "stream message of %d bytes exceeds the limit of %d (WithMaxPayload)", len(p.Payload), maxPayload)
	}
	cd, ok := streamCodec, true
	if ct := p.Properties.ContentType; ct != "" && ct != cd.ContentType() {
		cd, ok = builtinCodecs.Lookup(ct)
	}
	if !ok {
		return Errorf(InvalidArgument, "stream message has unknown content type %q", p.Properties.ContentType)
	}
	if err := cd.Unmarshal(p.Payload, msg); err != nil {
		return Errorf(InvalidArgument, "decoding a stream message as %s: %v", cd.ContentType(), err)
	}
	return nil
}
