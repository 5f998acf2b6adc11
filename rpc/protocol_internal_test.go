package rpc

import (
	"testing"
	"unicode/utf8"
)

// Any Go string survives the mqttrpc-message encoding, and what goes on the
// wire is a string every broker accepts.
func FuzzStatusMessage(f *testing.F) {
	for _, s := range []string{
		"", "plain", "100%", "%41", "%zz", "%", "a%4", "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n",
		"\x00nul", "\xff\xfe invalid", "\u0085\u009f\ufdd0\uffff", "\ufffd replacement",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, msg string) {
		wire := encodeStatusMessage(msg)
		if i := badMQTTString(wire); i >= 0 {
			t.Fatalf("encode(%q) = %q: bad at byte %d", msg, wire, i)
		}
		if !utf8.ValidString(wire) {
			t.Fatalf("encode(%q) = %q is not UTF-8", msg, wire)
		}
		if got := decodeStatusMessage(wire); got != msg {
			t.Fatalf("decode(encode(%q)) = %q", msg, got)
		}
	})
}

func TestCheckResponseTopic(t *testing.T) {
	for topic, bad := range map[string]bool{
		"mqttrpc/responses/c1": false,
		"mqttrpc/responses/☺":  false,
		"mqttrpc/responses/#":  true,
		"a/+/b":                true,
		"a/\nb":                true,
		"a/\x00":               true,
		"a/\xff":               true,
	} {
		if got := checkResponseTopic(topic) != ""; got != bad {
			t.Errorf("checkResponseTopic(%q) bad = %v, want %v", topic, got, bad)
		}
	}
}

func TestMetadataValueEncoding(t *testing.T) {
	wire, err := encodeMetadataValue("k-bin", "\x00\xab")
	if err != nil || wire != "AKs" {
		t.Fatalf("encode -bin = %q, %v", wire, err)
	}
	for _, in := range []string{"AKs", "AKs="} {
		if got := decodeMetadataValue("k-bin", in); got != "\x00\xab" {
			t.Errorf("decode %q = %q", in, got)
		}
	}
	if got := decodeMetadataValue("k-bin", "not base64!"); got != "not base64!" {
		t.Errorf("undecodable -bin value = %q, want it kept", got)
	}
	if _, err := encodeMetadataValue("k", "a\rb"); CodeOf(err) != InvalidArgument {
		t.Errorf("control character: %v", err)
	}
}
