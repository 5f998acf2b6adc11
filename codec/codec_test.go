package codec_test

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/codec"
)

func TestRoundTrip(t *testing.T) {
	for _, c := range []codec.Codec{codec.Proto, codec.JSON} {
		in := wrapperspb.Double(21.5)
		data, err := c.Marshal(in)
		if err != nil {
			t.Fatalf("%s: %v", c.Name(), err)
		}
		out := new(wrapperspb.DoubleValue)
		if err := c.Unmarshal(data, out); err != nil || !proto.Equal(in, out) {
			t.Fatalf("%s: got %v, %v", c.Name(), out, err)
		}
	}
	if _, err := codec.Proto.Marshal("not a message"); err == nil {
		t.Error("marshalling a string succeeded")
	}
}

func TestJSONEmptyPayloadIsEmptyMessage(t *testing.T) {
	out := wrapperspb.String("stale")
	if err := codec.JSON.Unmarshal(nil, out); err != nil || out.GetValue() != "" {
		t.Fatalf("got %q, %v", out.GetValue(), err)
	}
}

func TestJSONRejectsBadInput(t *testing.T) {
	for _, in := range []string{`{"value":`, "\"\xff\"", `{"nope": 1}`} {
		if err := codec.JSON.Unmarshal([]byte(in), new(wrapperspb.StringValue)); err == nil {
			t.Errorf("Unmarshal(%q) succeeded", in)
		}
	}
}

func TestRegistryLookup(t *testing.T) {
	r := codec.NewRegistry()
	for ct, want := range map[string]string{
		"":                                "proto",
		"application/protobuf":            "proto",
		"application/x-protobuf":          "proto",
		"application/json":                "json",
		"Application/JSON; charset=utf-8": "json",
	} {
		c, ok := r.Lookup(ct)
		if !ok || c.Name() != want {
			t.Errorf("Lookup(%q) = %v, %v; want %s", ct, c, ok, want)
		}
	}
	if _, ok := r.Lookup("text/plain"); ok {
		t.Error("text/plain found")
	}
}
