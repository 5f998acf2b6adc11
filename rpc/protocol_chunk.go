package rpc

// The wire format of chunks (docs/protocol.md, "Chunking"): the size of a
// PUBLISH as the broker counts it, splitting a message that does not fit
// the broker's Maximum Packet Size into chunks that do, and reading a
// chunk's properties. Putting messages together again is chunk.go's.

import (
	"errors"
	"mime"
	"strconv"
	"strings"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/codec"
)

const (
	// propChunk names a chunk: "<index>/<count>/<size>".
	propChunk = "mqttrpc-chunk"
	// chunkContentType is the ContentType of every chunk; its parameter
	// type names the message's content type (absent: protobuf). Receivers
	// older than chunking refuse it instead of decoding a fragment.
	chunkContentType = "application/vnd.mqttrpc.chunk"
	// chunkContentTypeJSON is the chunk type of a JSON message, ready made.
	chunkContentTypeJSON = chunkContentType + `; type="` + codec.ContentTypeJSON + `"`
)

// --- the size of a PUBLISH ---

// varintSize is the length of n as an MQTT variable byte integer.
func varintSize(n int) int {
	switch {
	case n < 128:
		return 1
	case n < 16384:
		return 2
	case n < 2097152:
		return 3
	}
	return 4
}

// propertiesSize is the length of a PUBLISH's properties on the wire,
// without their own length.
func propertiesSize(pp *paho.PublishProperties) int {
	if pp == nil {
		return 0
	}
	n := 0
	if pp.PayloadFormat != nil {
		n += 2
	}
	if pp.MessageExpiry != nil {
		n += 5
	}
	if pp.ContentType != "" {
		n += 3 + len(pp.ContentType)
	}
	if pp.ResponseTopic != "" {
		n += 3 + len(pp.ResponseTopic)
	}
	if len(pp.CorrelationData) > 0 {
		n += 3 + len(pp.CorrelationData)
	}
	if pp.TopicAlias != nil {
		n += 3
	}
	if pp.SubscriptionIdentifier != nil {
		n += 1 + varintSize(*pp.SubscriptionIdentifier)
	}
	for _, u := range pp.User {
		n += 5 + len(u.Key) + len(u.Value)
	}
	return n
}

// publishSize is the size of p as an MQTT 5 packet, the way a broker
// compares it with its Maximum Packet Size: fixed header, remaining
// length, topic, packet identifier, properties and payload.
func publishSize(p *paho.Publish) int {
	props := propertiesSize(p.Properties)
	remaining := 2 + len(p.Topic) + varintSize(props) + props + len(p.Payload)
	if p.QoS > 0 {
		remaining += 2
	}
	return 1 + varintSize(remaining) + remaining
}

// fits reports whether p may be sent under limit (0: no limit).
func fits(p *paho.Publish, limit int) bool {
	return limit <= 0 || publishSize(p) <= limit
}

// --- splitting ---

// chunkContentTypeFor returns the chunk content type of a message of
// content type messageType ("" for protobuf).
func chunkContentTypeFor(messageType string) string {
	switch messageType {
	case "", codec.ContentTypeProto:
		return chunkContentType
	case codec.ContentTypeJSON:
		return chunkContentTypeJSON
	}
	return mime.FormatMediaType(chunkContentType, map[string]string{"type": messageType})
}

// perChunkProperty reports whether a user property goes on every chunk:
// what a receiver needs to file a chunk that arrives first.
func perChunkProperty(key string) bool { return key == propSeq || key == propTarget }

// decimalDigits is the number of decimal digits of n >= 0.
func decimalDigits(n int) int {
	d := 1
	for n >= 10 {
		n /= 10
		d++
	}
	return d
}

// splitIntoChunks splits p, which does not fit limit, into chunks that
// do. Chunk 0 carries p's user properties in p's order followed by
// mqttrpc-chunk, so that a property's index in p is its index on chunk 0;
// the other chunks carry mqttrpc-seq and mqttrpc-target only. The chunks
// share p's MessageExpiry and payload. A message whose properties leave
// no room for payload is refused with ResourceExhausted.
func splitIntoChunks(p *paho.Publish, limit int) ([]*paho.Publish, *Error) {
	props := p.Properties
	if props == nil {
		props = &paho.PublishProperties{}
	}
	size := len(p.Payload)
	contentType := chunkContentTypeFor(props.ContentType)
	if contentType == "" {
		return nil, Errorf(Internal, "content type %q cannot be named in a chunk's content type", props.ContentType)
	}
	// Chunk 0 is the largest: it has every property. Its header is
	// counted as long as the longest one, and the remaining length as 4
	// bytes, so that every chunk fits.
	head := *props
	head.ContentType, head.PayloadFormat = contentType, nil
	propsLen := propertiesSize(&head) + 5 + len(propChunk) + 3*decimalDigits(size) + 2
	overhead := 1 + 4 + 2 + len(p.Topic) + varintSize(propsLen) + propsLen
	if p.QoS > 0 {
		overhead += 2
	}
	length := limit - overhead
	if size == 0 || length < 1 {
		return nil, Errorf(ResourceExhausted, "a message whose properties take %d bytes does not fit the broker's Maximum Packet Size of %d bytes, even in chunks", overhead-5, limit)
	}
	count := (size + length - 1) / length
	pubs := make([]paho.Publish, count)
	chunkProps := make([]paho.PublishProperties, count)
	chunks := make([]*paho.Publish, count)
	var common paho.UserProperties
	for _, u := range props.User {
		if perChunkProperty(u.Key) {
			common = append(common, u)
		}
	}
	tail := "/" + strconv.Itoa(count) + "/" + strconv.Itoa(size)
	for i := range count {
		cp := &chunkProps[i]
		*cp = paho.PublishProperties{
			ResponseTopic:   props.ResponseTopic,
			CorrelationData: props.CorrelationData,
			ContentType:     contentType,
			MessageExpiry:   props.MessageExpiry,
		}
		header := paho.UserProperty{Key: propChunk, Value: strconv.Itoa(i) + tail}
		if i == 0 {
			cp.User = append(append(make(paho.UserProperties, 0, len(props.User)+1), props.User...), header)
		} else {
			cp.User = append(append(make(paho.UserProperties, 0, len(common)+1), common...), header)
		}
		pubs[i] = paho.Publish{QoS: p.QoS, Topic: p.Topic, Properties: cp, Payload: p.Payload[i*length : min((i+1)*length, size)]}
		chunks[i] = &pubs[i]
	}
	return chunks, nil
}

// --- reading ---

// isChunk reports whether a PUBLISH is a chunk: by its ContentType, the
// one thing every receiver looks at before it decodes.
func isChunk(p *paho.Publish) bool {
	return p.Properties != nil && isChunkType(p.Properties.ContentType)
}

// isChunkType reports whether ct is the chunks' content type.
func isChunkType(ct string) bool {
	n := len(chunkContentType)
	return len(ct) >= n && strings.EqualFold(ct[:n], chunkContentType) && (len(ct) == n || ct[n] == ';' || ct[n] == ' ')
}

// messageContentType returns the content type of the message a chunk
// belongs to, from its ContentType's type parameter ("" for protobuf);
// ok is false when the ContentType does not parse.
func messageContentType(chunkType string) (string, bool) {
	switch chunkType {
	case chunkContentType:
		return "", true
	case chunkContentTypeJSON:
		return codec.ContentTypeJSON, true
	}
	if _, params, err := mime.ParseMediaType(chunkType); err == nil {
		return params["type"], true
	}
	// type=application/json unquoted, which ParseMediaType refuses.
	for _, param := range strings.Split(chunkType[len(chunkContentType):], ";") {
		name, value, ok := strings.Cut(strings.TrimSpace(param), "=")
		if ok && strings.EqualFold(name, "type") && value != "" && !strings.ContainsAny(value, `" `) {
			return value, true
		}
	}
	return "", false
}

// chunkHeader is what a chunk says about itself.
type chunkHeader struct {
	index, count, size int64
	valid              bool   // mqttrpc-chunk was present and well formed
	seq                int64  // mqttrpc-seq; -1 when absent or malformed
	target             string // mqttrpc-target
}

// readChunk reads a chunk's properties.
func readChunk(p *paho.Publish) chunkHeader {
	h := chunkHeader{seq: -1}
	for _, u := range p.Properties.User {
		switch u.Key {
		case propChunk:
			h.index, h.count, h.size, h.valid = parseChunkValue(u.Value)
		case propSeq:
			h.seq = parseCount(u.Value)
		case propTarget:
			h.target = u.Value
		}
	}
	return h
}

// parseChunkValue reads "<index>/<count>/<size>": three decimals.
func parseChunkValue(v string) (index, count, size int64, ok bool) {
	var n [3]int64
	for i := range n {
		part := v
		if i < 2 {
			var found bool
			if part, v, found = strings.Cut(v, "/"); !found {
				return 0, 0, 0, false
			}
		}
		if part == "" || part[0] < '0' || part[0] > '9' {
			return 0, 0, 0, false
		}
		x, err := strconv.ParseInt(part, 10, 64)
		if err != nil {
			return 0, 0, 0, false
		}
		n[i] = x
	}
	return n[0], n[1], n[2], true
}

// explainChunkRefusal tells the caller what the answer of a server older
// than chunking means: it refused the chunks' content type, as it should
// (docs/protocol.md, "Chunking"), and nothing ran.
func explainChunkRefusal(err error) error {
	var e *Error
	if err == nil || !errors.As(err, &e) || !e.wire || e.Code() != InvalidArgument ||
		!strings.Contains(e.Message(), "unknown content type") || !strings.Contains(e.Message(), chunkContentType) {
		return err
	}
	out := Errorf(InvalidArgument, "the request was too large for the broker's Maximum Packet Size and went in chunks, which the server does not know (it predates them; nothing ran); it answered: %s", e.Message())
	out.wire, out.meta = true, e.meta
	return out
}
