package rpc

import (
	"encoding/base64"
	"strings"
	"unicode/utf8"
)

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
