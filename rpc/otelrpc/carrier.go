package otelrpc

import (
	"strings"

	"go.opentelemetry.io/otel/propagation"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// MetadataCarrier adapts rpc.Metadata (a call's MQTT user properties) to
// propagation.TextMapCarrier, for code that injects or extracts trace
// context itself:
//
//	propagator.Inject(ctx, otelrpc.MetadataCarrier(call.RequestMetadata()))
type MetadataCarrier rpc.Metadata

var (
	_ propagation.TextMapCarrier = MetadataCarrier(nil)
	_ propagation.ValuesGetter   = MetadataCarrier(nil)
)

// Get returns the first value of key. MQTT user property names are
// case-sensitive and the W3C note for MQTT writes them in lower case; a key
// that differs only in case is accepted too, for clients that capitalise.
func (c MetadataCarrier) Get(key string) string {
	if v := c[key]; len(v) > 0 {
		return v[0]
	}
	for k, v := range c {
		if len(v) > 0 && strings.EqualFold(k, key) {
			return v[0]
		}
	}
	return ""
}

// Set replaces the values of key with value.
func (c MetadataCarrier) Set(key, value string) {
	c[key] = []string{value}
}

// Keys returns the keys in the metadata.
func (c MetadataCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Values returns all values of key, for propagators that read repeated
// properties (several baggage properties, for example).
func (c MetadataCarrier) Values(key string) []string {
	if v, ok := c[key]; ok {
		return v
	}
	for k, v := range c {
		if strings.EqualFold(k, key) {
			return v
		}
	}
	return nil
}
