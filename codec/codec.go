// Package codec turns messages into MQTT payloads and back. A request names
// its codec with the MQTT 5 ContentType property; a server answers in the
// codec the request used.
package codec

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Content types of the built-in codecs.
const (
	// ContentTypeProto is protobuf binary, the default when a request has no
	// ContentType.
	ContentTypeProto = "application/protobuf"
	// ContentTypeJSON is protobuf's canonical JSON mapping (protojson).
	ContentTypeJSON = "application/json"
)

// Codec marshals and unmarshals messages.
type Codec interface {
	// Name is a short name such as "proto" or "json".
	Name() string
	// ContentType is the MIME type sent in the MQTT ContentType property.
	ContentType() string
	// Marshal encodes msg.
	Marshal(msg any) ([]byte, error)
	// Unmarshal decodes data into msg, which the caller allocated.
	Unmarshal(data []byte, msg any) error
}

// Proto is the protobuf binary codec (application/protobuf).
var Proto Codec = protoCodec{}

// JSON is the protojson codec (application/json). It emits proto field names
// as JSON names (lowerCamelCase) and accepts both; unknown fields are an
// error, as a typo in a hand-written request should be.
var JSON Codec = jsonCodec{}

type protoCodec struct{}

func (protoCodec) Name() string        { return "proto" }
func (protoCodec) ContentType() string { return ContentTypeProto }

func (protoCodec) Marshal(msg any) ([]byte, error) {
	m, ok := msg.(proto.Message)
	if !ok {
		return nil, errNotProto(msg)
	}
	return proto.Marshal(m)
}

func (protoCodec) Unmarshal(data []byte, msg any) error {
	m, ok := msg.(proto.Message)
	if !ok {
		return errNotProto(msg)
	}
	return proto.Unmarshal(data, m)
}

type jsonCodec struct{}

func (jsonCodec) Name() string        { return "json" }
func (jsonCodec) ContentType() string { return ContentTypeJSON }

func (jsonCodec) Marshal(msg any) ([]byte, error) {
	m, ok := msg.(proto.Message)
	if !ok {
		return nil, errNotProto(msg)
	}
	return protojson.Marshal(m)
}

func (jsonCodec) Unmarshal(data []byte, msg any) error {
	m, ok := msg.(proto.Message)
	if !ok {
		return errNotProto(msg)
	}
	if len(data) == 0 {
		// An empty payload is the empty message, as in protobuf binary; it
		// lets a shell user send a request without fields as "".
		proto.Reset(m)
		return nil
	}
	return protojson.Unmarshal(data, m)
}

func errNotProto(msg any) error {
	return fmt.Errorf("codec: %T is not a proto.Message", msg)
}

// Registry finds codecs by content type. The zero value knows no codec; use
// NewRegistry for one that knows Proto and JSON.
type Registry struct {
	byType map[string]Codec
}

// NewRegistry returns a registry with Proto and JSON, plus the given codecs
// (which replace built-ins of the same content type).
func NewRegistry(extra ...Codec) *Registry {
	r := &Registry{byType: map[string]Codec{}}
	for _, c := range append([]Codec{Proto, JSON}, extra...) {
		r.byType[c.ContentType()] = c
	}
	return r
}

// Lookup returns the codec for a content type. An empty content type means
// protobuf. Parameters such as "; charset=utf-8" and letter case are ignored,
// and "application/x-protobuf" is taken as protobuf.
func (r *Registry) Lookup(contentType string) (Codec, bool) {
	if contentType == "" {
		contentType = ContentTypeProto
	}
	if c, ok := r.byType[contentType]; ok {
		return c, true
	}
	mediaType, _, _ := strings.Cut(contentType, ";")
	mediaType = strings.ToLower(strings.TrimSpace(mediaType))
	if mediaType == "application/x-protobuf" {
		mediaType = ContentTypeProto
	}
	c, ok := r.byType[mediaType]
	return c, ok
}
