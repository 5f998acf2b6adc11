package otelrpc_test

import (
	"slices"
	"testing"

	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/rpc/otelrpc"
)

func TestMetadataCarrier(t *testing.T) {
	md := rpc.Metadata{"x-other": {"1"}}
	carrier := otelrpc.MetadataCarrier(md)
	carrier.Set("traceparent", "00-a-b-01")
	carrier.Set("traceparent", "00-c-d-01")
	if got := md.Values("traceparent"); !slices.Equal(got, []string{"00-c-d-01"}) {
		t.Errorf("Set twice left %v, want the last value only", got)
	}
	if got := carrier.Get("traceparent"); got != "00-c-d-01" {
		t.Errorf("Get = %q", got)
	}
	keys := carrier.Keys()
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"traceparent", "x-other"}) {
		t.Errorf("Keys = %v", keys)
	}

	foreign := otelrpc.MetadataCarrier(rpc.Metadata{"Traceparent": {"00-e-f-01"}, "baggage": {"a=1", "b=2"}})
	if got := foreign.Get("traceparent"); got != "00-e-f-01" {
		t.Errorf("Get of a capitalised key = %q, want its value", got)
	}
	if got := foreign.Values("baggage"); !slices.Equal(got, []string{"a=1", "b=2"}) {
		t.Errorf("Values = %v, want both baggage properties", got)
	}
	if got := foreign.Get("tracestate"); got != "" {
		t.Errorf("Get of a missing key = %q", got)
	}
}
