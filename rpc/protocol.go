package rpc

// The wire format of mqttrpc, version 1, in the order of docs/protocol.md:
// properties and topics, the request PUBLISH (encoded by clients, read by
// servers), the response PUBLISH (encoded by servers, read by clients),
// strings on the wire, status codes. Client and server code call into this
// file and hold no wire details of their own.

import (
	"encoding/base64"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/codec"
)

// Property names of the protocol (MQTT user properties).
const (
	propVersion = "mqttrpc-version"
	propTimeout = "mqttrpc-timeout"
	propStatus  = "mqttrpc-status"
	propMessage = "mqttrpc-message"
	propTarget  = "mqttrpc-target"
	propCancel  = "mqttrpc-cancel"

	protocolVersion = "1"
)

// --- topics ---

// maxCorrelationData bounds the CorrelationData a server echoes. Our
// clients send 16 bytes; foreign clients often send a UUID string.
const maxCorrelationData = 256

// checkResponseTopic returns why a ResponseTopic cannot be published to, or
// "" when it can: a wildcard or a character brokers refuse would get the
// server disconnected when it answers.
func checkResponseTopic(topic string) string {
	if strings.ContainsAny(topic, "+#") {
		return "contains a wildcard (+ or #)"
	}
	if badMQTTString(topic) >= 0 {
		return "contains a control character or invalid UTF-8"
	}
	return ""
}

// --- the request PUBLISH ---

// prepare validates a call and builds its request PUBLISH, without
// correlation data. timeoutProp is the index of the mqttrpc-timeout user
// property, set at each attempt.
func (c *Client) prepare(cc *clientCall, tmpl *TopicTemplate, req any) (out *outgoingRequest, timeoutProp int, err error) {
	call, cfg := &cc.Call, &cc.cfg
	switch {
	case call.target == "":
		return nil, 0, Errorf(InvalidArgument, "call to %s has no target: pass rpc.To(id) or rpc.ToAny()", call.Procedure())
	case call.target != TargetAny && call.target != TargetAll:
		if err := checkID("target", call.target); err != nil {
			return nil, 0, err
		}
	}
	if cfg.qos > QoS2 {
		return nil, 0, Errorf(InvalidArgument, "QoS %d is not 0, 1 or 2", cfg.qos)
	}
	for _, name := range tmpl.custom {
		if call.tokens[name] == "" {
			return nil, 0, Errorf(InvalidArgument, "topic template %q needs a value for {%s}: pass rpc.WithToken(%q, value)", tmpl.raw, name, name)
		}
	}
	topic, err := tmpl.render(&topicValues{service: call.service, target: call.target, method: call.method, custom: call.tokens})
	if err != nil {
		return nil, 0, err
	}
	call.topic = topic
	out = new(outgoingRequest)
	props := &out.props
	props.ResponseTopic = c.responseTopic
	// Absent means protobuf, and absent mqttrpc-version means 1: every
	// property costs allocations in the broker and in the server's MQTT
	// client, so the defaults are not sent.
	if ct := cfg.codec.ContentType(); ct != codec.ContentTypeProto {
		props.ContentType = ct
	}
	props.MessageExpiry = &out.expiry
	props.User = out.user[:0]
	if len(call.reqMeta) > 0 {
		props.User = make(paho.UserProperties, 0, 1+len(call.reqMeta))
	}
	for k, vs := range call.reqMeta {
		if err := checkMetadataKey(k); err != nil {
			return nil, 0, err
		}
		for _, v := range vs {
			wire, err := encodeMetadataValue(k, v)
			if err != nil {
				return nil, 0, err
			}
			props.User = append(props.User, paho.UserProperty{Key: k, Value: wire})
		}
	}
	if cfg.codec.ContentType() == codec.ContentTypeJSON {
		props.PayloadFormat = &payloadFormatUTF8
	}
	var payload []byte
	if _, none := req.(noMessage); !none { // a stream's open may carry no message
		if payload, err = cfg.codec.Marshal(req); err != nil {
			return nil, 0, Errorf(Internal, "encoding the request: %w", err)
		}
	}
	if len(payload) > c.maxPayload {
		return nil, 0, Errorf(ResourceExhausted, "request of %d bytes exceeds the client's limit of %d (WithMaxPayload)", len(payload), c.maxPayload)
	}
	timeoutProp = len(props.User)
	props.User = append(props.User, paho.UserProperty{Key: propTimeout})
	out.publish = paho.Publish{QoS: byte(cfg.qos), Topic: topic, Properties: props, Payload: payload}
	return out, timeoutProp, nil
}

// outgoingRequest holds a request PUBLISH and its parts in one allocation.
type outgoingRequest struct {
	publish paho.Publish
	props   paho.PublishProperties
	user    [1]paho.UserProperty // mqttrpc-timeout
	expiry  uint32
	corr    [16]byte // the correlation data
}

var payloadFormatUTF8 byte = 1

// expirySeconds rounds a duration up to whole seconds, at least 1, for the
// MessageExpiryInterval.
func expirySeconds(d time.Duration) uint32 {
	s := math.Ceil(d.Seconds())
	return uint32(min(max(s, 1), math.MaxUint32))
}

// deadline computes the caller's deadline, arrival + min(mqttrpc-timeout,
// MessageExpiryInterval), and the handler's, that capped by the server's
// maximum. ok is false for a request that has already expired.
func (s *Server) deadline(arrival time.Time, props *paho.PublishProperties) (handler, caller time.Time, ok bool) {
	timeout, have := time.Duration(0), false
	if props.MessageExpiry != nil {
		if *props.MessageExpiry == 0 {
			return time.Time{}, time.Time{}, false
		}
		timeout, have = time.Duration(*props.MessageExpiry)*time.Second, true
	}
	for _, u := range props.User {
		if u.Key == propTimeout {
			ms, err := strconv.ParseInt(u.Value, 10, 64)
			if err != nil {
				continue // a malformed hint is ignored; the expiry still bounds the call
			}
			if ms <= 0 {
				return time.Time{}, time.Time{}, false
			}
			if t := time.Duration(min(ms, int64(math.MaxInt64/time.Millisecond))) * time.Millisecond; !have || t < timeout {
				timeout, have = t, true
			}
			break
		}
	}
	if !have {
		timeout = s.cfg.defaultTimeout
	}
	caller = arrival.Add(timeout)
	return arrival.Add(min(timeout, s.cfg.maxTimeout)), caller, true
}

// readRequestProperties returns a request's protocol version and puts its
// metadata into call.
func readRequestProperties(p *paho.Publish, call *Call) (version string) {
	version = protocolVersion
	for _, u := range p.Properties.User {
		switch {
		case u.Key == propVersion:
			version = u.Value
		case !isReservedKey(u.Key):
			call.RequestMetadata().Add(u.Key, decodeMetadataValue(u.Key, u.Value))
		}
	}
	return version
}

// --- cancellation ---

// cancelMessage returns the cancel message of request p: on the request
// topic, with its ResponseTopic and CorrelationData and mqttrpc-cancel: 1,
// no payload.
func cancelMessage(p *paho.Publish) *paho.Publish {
	expiry := uint32(1)
	if p.Properties.MessageExpiry != nil {
		expiry = *p.Properties.MessageExpiry
	}
	return &paho.Publish{
		QoS:   p.QoS,
		Topic: p.Topic,
		Properties: &paho.PublishProperties{
			ResponseTopic:   p.Properties.ResponseTopic,
			CorrelationData: p.Properties.CorrelationData,
			MessageExpiry:   &expiry,
			User:            paho.UserProperties{{Key: propCancel, Value: "1"}},
		},
	}
}

// --- the response PUBLISH ---

// buildResponse encodes an answer.
func (s *Server) buildResponse(req *request, call *Call, cd codec.Codec, resp any, handlerErr error) *cachedResponse {
	p := req.publish
	var payload []byte
	if isNilError(handlerErr) {
		handlerErr = nil
	}
	if handlerErr == nil {
		var err error
		if payload, err = s.marshal(cd, resp); err != nil {
			handlerErr = Errorf(Internal, "encoding the response: %v", err)
		} else if len(payload) > s.cfg.maxPayload {
			handlerErr = Errorf(ResourceExhausted, "response of %d bytes exceeds the server's limit of %d", len(payload), s.cfg.maxPayload)
		}
	}
	var rpcErr *Error
	if handlerErr != nil {
		rpcErr = asError(handlerErr)
		if rpcErr.Code() == OK {
			// An error that says OK would read as an empty success.
			rpcErr = Errorf(Unknown, "handler returned an error with code OK: %s", rpcErr.Message())
		}
		for k, vs := range rpcErr.meta {
			call.ResponseMetadata()[k] = append(call.ResponseMetadata()[k], vs...)
		}
		payload = nil
	}
	meta, err := responseMetadata(call.respMeta)
	if err != nil {
		// A value no broker carries would cost the server its connection.
		rpcErr, meta, payload = err, nil, nil
	}
	// mqttrpc-target tells the caller who answered when it could not know:
	// a broadcast or an anycast. A unicast caller named the target itself.
	target := req.values.target
	withTarget := (target == TargetAll || target == TargetAny) && s.cfg.serverID != ""
	// An OK answer carries no mqttrpc-status: absent means 0 (protocol.md,
	// "Defaults stay off the wire").
	var user []userProperty
	if rpcErr != nil || withTarget || len(meta) > 0 {
		user = make([]userProperty, 0, 3+len(meta))
	}
	if withTarget {
		user = append(user, userProperty{propTarget, s.cfg.serverID})
	}
	if rpcErr != nil {
		user = append(user,
			userProperty{propStatus, strconv.FormatUint(uint64(rpcErr.Code()), 10)},
			userProperty{propMessage, encodeStatusMessage(rpcErr.Message())})
	}
	user = append(user, meta...)
	return &cachedResponse{
		qos:       p.QoS,
		topic:     p.Properties.ResponseTopic,
		anonymous: target == TargetAll && s.cfg.serverID == "",
		properties: responseProperties{
			correlationData: p.Properties.CorrelationData,
			contentType:     responseContentType(cd),
			user:            user,
		},
		payload: payload,
	}
}

// responseMetadata returns the user properties of a response's metadata,
// or Internal when the handler set one that MQTT cannot carry.
func responseMetadata(md Metadata) ([]userProperty, *Error) {
	var user []userProperty
	for k, vs := range md {
		if isReservedKey(k) {
			continue
		}
		if err := checkMetadataKey(k); err != nil {
			return nil, Errorf(Internal, "the handler set response metadata the server cannot send: %s", asError(err).Message())
		}
		for _, v := range vs {
			wire, err := encodeMetadataValue(k, v)
			if err != nil {
				return nil, Errorf(Internal, "the handler set response metadata the server cannot send: %s", asError(err).Message())
			}
			user = append(user, userProperty{k, wire})
		}
	}
	return user, nil
}

// responseContentType is the ContentType of an answer encoded with cd:
// none for protobuf, which is what an absent ContentType means.
func responseContentType(cd codec.Codec) string {
	if ct := cd.ContentType(); ct != codec.ContentTypeProto {
		return ct
	}
	return ""
}

// outgoingResponse holds a response PUBLISH and its parts.
type outgoingResponse struct {
	publish paho.Publish
	props   paho.PublishProperties
	user    [3]paho.UserProperty // mqttrpc-target, mqttrpc-status, mqttrpc-message
	expiry  uint32
}

// cachedResponse is an answer kept to be sent again to a duplicate.
type cachedResponse struct {
	qos byte
	// anonymous: an answer to a broadcast from a server without an ID,
	// which cannot go in chunks (docs/protocol.md, "Chunking"). Next to
	// qos, in its padding.
	anonymous  bool
	topic      string
	properties responseProperties
	payload    []byte
}

// responseProperties are the parts of a response's properties that do not
// depend on when it is sent.
type responseProperties struct {
	correlationData []byte
	contentType     string
	user            []userProperty
}

type userProperty struct{ key, value string }

// decodeResponse reads an answer: its status, message and metadata into
// call, and on OK its payload into resp. An answer without mqttrpc-status
// is OK.
func (c *Client) decodeResponse(call *Call, requestCodec codec.Codec, p *paho.Publish, resp any) error {
	props := p.Properties
	if call.target == TargetAny || call.target == TargetAll {
		call.answeredBy = responseTarget(p)
	} else {
		call.answeredBy = call.target
	}
	code := OK // an answer without mqttrpc-status is OK
	var message string
	for _, u := range props.User {
		switch u.Key {
		case propStatus:
			var ok bool
			if code, ok = parseStatus(u.Value); !ok {
				return Errorf(Internal, "response has a malformed %s %q", propStatus, u.Value)
			}
		case propMessage:
			message = decodeStatusMessage(u.Value)
		case propVersion:
			// A server answers in the request's version: an answer in
			// another one is not meant for this client.
			if u.Value != protocolVersion {
				return Errorf(Internal, "the answer is in mqttrpc protocol version %q; this client speaks version %s", u.Value, protocolVersion)
			}
		default:
			if !isReservedKey(u.Key) {
				call.ResponseMetadata().Add(u.Key, decodeMetadataValue(u.Key, u.Value))
			}
		}
	}
	if code != OK {
		e := Errorf(code, "%s", message)
		e.wire = true
		if len(call.respMeta) > 0 {
			e.meta = call.respMeta.Clone()
		}
		return e
	}
	if len(p.Payload) > c.maxPayload {
		return Errorf(ResourceExhausted, "response of %d bytes exceeds the client's limit of %d (WithMaxPayload)", len(p.Payload), c.maxPayload)
	}
	cd, ok := requestCodec, true
	if props.ContentType != "" && props.ContentType != cd.ContentType() {
		cd, ok = builtinCodecs.Lookup(props.ContentType)
	}
	if !ok {
		return Errorf(Internal, "response has unknown content type %q", props.ContentType)
	}
	if err := cd.Unmarshal(p.Payload, resp); err != nil {
		return Errorf(Internal, "decoding the response as %s: %v", cd.ContentType(), err)
	}
	return nil
}

// responseTarget reads the mqttrpc-target property of a response.
func responseTarget(p *paho.Publish) string {
	for _, u := range p.Properties.User {
		if u.Key == propTarget {
			return u.Value
		}
	}
	return ""
}

// --- strings on the wire ---
//
// MQTT 5 strings (§1.5.4) are UTF-8 without U+0000, and a receiver may
// refuse control characters and non-characters: Mosquitto closes the
// connection of a client that sends one ("Malformed UTF-8"). Whatever goes
// into a topic or a user property is checked or encoded here, so that no
// value a caller or a handler chooses can make a connection flap.

// mqttSafeRune reports whether r may appear in an MQTT string that every
// broker accepts.
func mqttSafeRune(r rune) bool {
	switch {
	case r == utf8.RuneError:
		return false // invalid UTF-8 (a literal U+FFFD is checked by the caller)
	case r <= 0x1F, r >= 0x7F && r <= 0x9F:
		return false // control characters
	case r >= 0xFDD0 && r <= 0xFDEF, r&0xFFFE == 0xFFFE:
		return false // non-characters
	}
	return true
}

// badMQTTString returns the byte offset of the first character that some
// broker would refuse in s, or -1 when s is safe.
func badMQTTString(s string) int {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if !mqttSafeRune(r) && !(r == utf8.RuneError && size == 3) {
			return i
		}
		i += size
	}
	return -1
}

// encodeStatusMessage makes an error message safe for the mqttrpc-message
// user property: '%' and the bytes of every character that a broker may
// refuse are percent-encoded (%XX), everything else, non-ASCII text
// included, is sent as it is. gRPC encodes its grpc-message for the same
// reason.
func encodeStatusMessage(msg string) string {
	if !strings.Contains(msg, "%") && badMQTTString(msg) < 0 {
		return msg
	}
	var b strings.Builder
	b.Grow(len(msg) + 8)
	for i := 0; i < len(msg); {
		r, size := utf8.DecodeRuneInString(msg[i:])
		if r != '%' && (mqttSafeRune(r) || (r == utf8.RuneError && size == 3)) {
			b.WriteString(msg[i : i+size])
		} else {
			for _, c := range []byte(msg[i : i+size]) {
				b.WriteByte('%')
				b.WriteByte(hexDigits[c>>4])
				b.WriteByte(hexDigits[c&0xF])
			}
		}
		i += size
	}
	return b.String()
}

const hexDigits = "0123456789ABCDEF"

// decodeStatusMessage undoes encodeStatusMessage. A '%' that does not start
// a valid %XX sequence is kept as it is, as gRPC does.
func decodeStatusMessage(msg string) string {
	if !strings.Contains(msg, "%") {
		return msg
	}
	out := make([]byte, 0, len(msg))
	for i := 0; i < len(msg); i++ {
		if msg[i] == '%' && i+2 < len(msg) {
			hi, ok1 := unhex(msg[i+1])
			lo, ok2 := unhex(msg[i+2])
			if ok1 && ok2 {
				out = append(out, hi<<4|lo)
				i += 2
				continue
			}
		}
		out = append(out, msg[i])
	}
	return string(out)
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// binarySuffix marks metadata keys whose values are bytes: they travel in
// base64, as in gRPC.
const binarySuffix = "-bin"

func isBinaryKey(key string) bool { return strings.HasSuffix(key, binarySuffix) }

// encodeMetadataValue returns the wire form of a metadata value, or an
// InvalidArgument error for a value that no broker would carry.
func encodeMetadataValue(key, value string) (string, error) {
	if isBinaryKey(key) {
		return base64.RawStdEncoding.EncodeToString([]byte(value)), nil
	}
	if i := badMQTTString(value); i >= 0 {
		return "", Errorf(InvalidArgument, "metadata %q: the value has a control character or invalid UTF-8 at byte %d, which MQTT brokers refuse; send bytes under a key ending in %q (base64 on the wire)", key, i, binarySuffix)
	}
	return value, nil
}

// checkMetadataKey refuses keys that are reserved or not valid MQTT strings.
func checkMetadataKey(key string) error {
	switch {
	case key == "":
		return Errorf(InvalidArgument, "metadata key is empty")
	case isReservedKey(key):
		return Errorf(InvalidArgument, "metadata key %q is reserved for the protocol", key)
	case badMQTTString(key) >= 0:
		return Errorf(InvalidArgument, "metadata key %q has a control character or invalid UTF-8, which MQTT brokers refuse", key)
	}
	return nil
}

// decodeMetadataValue returns the value of a received user property: base64
// decoded under a -bin key (padded or not); a value that does not decode is
// kept as it came.
func decodeMetadataValue(key, value string) string {
	if !isBinaryKey(key) {
		return value
	}
	if b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(value, "=")); err == nil {
		return string(b)
	}
	return value
}

// --- status codes ---

// parseStatus reads the mqttrpc-status property. Anything that is not a
// decimal code is reported as ok=false.
func parseStatus(s string) (Code, bool) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return Unknown, false
	}
	return Code(n), true
}
