package rpc

import (
	"bytes"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/codec"
)

// publishSize counts a PUBLISH as paho writes it.
func TestPublishSizeMatchesPaho(t *testing.T) {
	expiry := uint32(30)
	format := byte(1)
	for _, p := range []*paho.Publish{
		{Topic: "a/b"},
		{QoS: 1, Topic: "mqttrpc/svc/dev-1/Echo", Payload: make([]byte, 200)},
		{QoS: 2, Topic: "t", Properties: &paho.PublishProperties{
			ResponseTopic: "mqttrpc/responses/c", CorrelationData: make([]byte, 16), ContentType: "application/json",
			MessageExpiry: &expiry, PayloadFormat: &format,
			User: paho.UserProperties{{Key: "mqttrpc-timeout", Value: "1000"}, {Key: "k", Value: "v☺"}},
		}, Payload: make([]byte, 20000)},
		{QoS: 1, Topic: "big", Payload: make([]byte, 3<<20)},
	} {
		pk := p.Packet()
		pk.PacketID = 1
		var buf bytes.Buffer
		if _, err := pk.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		if got, want := publishSize(p), buf.Len(); got != want {
			t.Errorf("publishSize(%q, %d bytes of payload) = %d, paho writes %d", p.Topic, len(p.Payload), got, want)
		}
	}
}

// A message split into chunks has every chunk within the limit, and comes
// back whole in any order, copies included.
func TestSplitAndReassemble(t *testing.T) {
	expiry := uint32(30)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		limit, size int
		contentType string
		user        paho.UserProperties
	}{
		{limit: 1024, size: 1025},
		{limit: 65536, size: 10 << 20, user: paho.UserProperties{{Key: propTimeout, Value: "9999"}, {Key: "x-meta", Value: "m"}}},
		{limit: 300, size: 5000, contentType: codec.ContentTypeJSON, user: paho.UserProperties{{Key: propSeq, Value: "7"}, {Key: propTarget, Value: "dev-1"}}},
		{limit: 500, size: 1000, contentType: "application/x-custom+cbor"},
	} {
		payload := make([]byte, tc.size)
		for i := range payload {
			payload[i] = byte(rng.Uint32())
		}
		p := &paho.Publish{QoS: 1, Topic: "mqttrpc/svc/dev-1/Echo", Payload: payload, Properties: &paho.PublishProperties{
			ResponseTopic: "mqttrpc/responses/c", CorrelationData: []byte("0123456789abcdef"), ContentType: tc.contentType,
			MessageExpiry: &expiry, User: tc.user,
		}}
		if fits(p, tc.limit) {
			t.Fatalf("test case of %d bytes fits %d", tc.size, tc.limit)
		}
		chunks, err := splitIntoChunks(p, tc.limit)
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range chunks {
			if n := publishSize(c); n > tc.limit {
				t.Errorf("chunk %d of %d is %d bytes, over the limit of %d", i, len(chunks), n, tc.limit)
			}
			if c.Properties.PayloadFormat != nil {
				t.Errorf("chunk %d has a PayloadFormatIndicator", i)
			}
		}
		// Chunk 0 keeps the message's properties in order, then the header.
		if got := chunks[0].Properties.User; len(got) != len(tc.user)+1 || got[len(got)-1].Key != propChunk {
			t.Errorf("chunk 0 user properties = %v", got)
		}
		if len(chunks) > 1 {
			for _, u := range chunks[1].Properties.User {
				if u.Key != propChunk && !perChunkProperty(u.Key) {
					t.Errorf("chunk 1 carries the message property %s", u.Key)
				}
			}
		}
		r := newReassembly(tc.size, 0, "test")
		order := rng.Perm(len(chunks))
		order = append(order, order[0], order[len(order)/2]) // copies
		var whole *paho.Publish
		for n, i := range order {
			c := chunks[i]
			res := r.add(chunkKey{call: "c", seq: -1}, c, readChunk(c), time.Now(), time.Now().Add(time.Minute), true)
			switch {
			case res.outcome == chunkComplete:
				if whole != nil {
					t.Fatal("completed twice")
				}
				whole = res.message
			case res.outcome == chunkRefused:
				t.Fatalf("chunk %d refused: %v", i, res.err)
			case res.outcome == chunkDropped && n < len(chunks):
				t.Fatalf("chunk %d (arrival %d) dropped", i, n)
			}
		}
		if whole == nil {
			t.Fatal("never complete")
		}
		if !bytes.Equal(whole.Payload, payload) {
			t.Fatalf("%d bytes in %d chunks: reassembled payload differs", tc.size, len(chunks))
		}
		if whole.Properties.ContentType != tc.contentType {
			t.Errorf("ContentType %q, want %q", whole.Properties.ContentType, tc.contentType)
		}
		if r.heldBytes() != chunkEntryCost {
			t.Errorf("after completion %d bytes held, want one remembered entry (%d)", r.heldBytes(), chunkEntryCost)
		}
		r.close()
	}
}

func TestMessageContentType(t *testing.T) {
	for in, want := range map[string]string{
		chunkContentType:                                          "",
		chunkContentTypeJSON:                                      codec.ContentTypeJSON,
		chunkContentType + "; type=application/json":              codec.ContentTypeJSON,
		"Application/Vnd.Mqttrpc.Chunk; TYPE=\"application/x-y\"": "application/x-y",
		chunkContentType + `; charset=x; type="a/b; v=1"`:         "a/b; v=1",
	} {
		got, ok := messageContentType(in)
		if !ok || got != want {
			t.Errorf("messageContentType(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	if _, ok := messageContentType(chunkContentType + `; type="unterminated`); ok {
		t.Error("an unterminated quoted type parses")
	}
	if !isChunk(&paho.Publish{Properties: &paho.PublishProperties{ContentType: chunkContentType}}) || isChunk(&paho.Publish{Properties: &paho.PublishProperties{ContentType: chunkContentType + "x"}}) {
		t.Error("isChunk")
	}
}

// Chunks that contradict each other refuse the message and free its memory.
func TestReassemblyRefuses(t *testing.T) {
	chunk := func(value string, n int) (*paho.Publish, chunkHeader) {
		p := &paho.Publish{Topic: "t", Payload: make([]byte, n), Properties: &paho.PublishProperties{
			ContentType: chunkContentType, User: paho.UserProperties{{Key: propChunk, Value: value}}}}
		return p, readChunk(p)
	}
	now, later := time.Now(), time.Now().Add(time.Minute)
	for _, tc := range []struct {
		name   string
		chunks []string // "<value> <length>"
		want   Code
		reason DropReason
	}{
		{"index out of range", []string{"3/3/30 10"}, InvalidArgument, DropBadChunk},
		{"count changes", []string{"0/3/30 10", "1/4/30 10"}, InvalidArgument, DropBadChunk},
		{"size changes", []string{"0/3/30 10", "1/3/31 10"}, InvalidArgument, DropBadChunk},
		{"count above size", []string{"0/40/30 1"}, InvalidArgument, DropBadChunk},
		{"count 0", []string{"0/0/30 1"}, InvalidArgument, DropBadChunk},
		{"huge count", []string{"0/9223372036854775807/9223372036854775807 1"}, ResourceExhausted, DropTooLarge},
		{"malformed header", []string{"0/3 10"}, InvalidArgument, DropBadChunk},
		{"signed", []string{"+0/3/30 10"}, InvalidArgument, DropBadChunk},
		{"short chunk", []string{"0/3/30 10", "1/3/30 9"}, InvalidArgument, DropBadChunk},
		{"lengths that make no message", []string{"0/3/30 5"}, InvalidArgument, DropBadChunk},
		{"last too long", []string{"0/3/30 10", "2/3/30 11"}, InvalidArgument, DropBadChunk},
		{"last first, not dividing", []string{"2/3/30 9"}, InvalidArgument, DropBadChunk},
		{"over the message limit", []string{"0/2/2000 1000"}, ResourceExhausted, DropTooLarge},
		{"over the total limit", []string{"0/2/1000 500"}, ResourceExhausted, DropOverload},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newReassembly(1500, 1200, "test")
			defer r.close()
			if tc.reason == DropOverload {
				p, h := chunk("0/2/600", 300)
				if res := r.add(chunkKey{call: "other"}, p, h, now, later, false); res.outcome != chunkKept {
					t.Fatalf("first message: %+v %v", res, res.err)
				}
			}
			var res chunkResult
			for _, c := range tc.chunks {
				value, length, _ := bytes.Cut([]byte(c), []byte(" "))
				n, _ := strconv.Atoi(string(length))
				p, h := chunk(string(value), n)
				if res = r.add(chunkKey{call: "c"}, p, h, now, later, true); res.outcome == chunkRefused {
					break
				}
			}
			if res.outcome != chunkRefused || res.err.Code() != tc.want || res.reason != tc.reason {
				t.Fatalf("outcome %v, %v (%v), want refused with %v (%v)", res.outcome, res.err, res.reason, tc.want, tc.reason)
			}
			if tc.reason == DropOverload {
				return // no room to remember it either
			}
			// Remembered: a later chunk of the message is dropped.
			p, h := chunk("1/3/30 10", 10)
			if res := r.add(chunkKey{call: "c"}, p, h, now, later, true); res.outcome != chunkDropped {
				t.Errorf("chunk after the refusal: %v, want dropped", res.outcome)
			}
		})
	}
}

// An incomplete message is dropped when its first chunk expires, and its
// receiver is told.
func TestReassemblyExpires(t *testing.T) {
	r := newReassembly(1000, 0, "test")
	defer r.close()
	expired := make(chan string, 1)
	r.onExpire = func(key chunkKey, topic string) { expired <- topic }
	p := &paho.Publish{Topic: "the/topic", Payload: make([]byte, 10), Properties: &paho.PublishProperties{
		ContentType: chunkContentType, User: paho.UserProperties{{Key: propChunk, Value: "0/2/20"}}}}
	if res := r.add(chunkKey{call: "c"}, p, readChunk(p), time.Now(), time.Now().Add(20*time.Millisecond), true); res.outcome != chunkKept {
		t.Fatal(res)
	}
	select {
	case topic := <-expired:
		if topic != "the/topic" {
			t.Errorf("expired %q", topic)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the incomplete message never expired")
	}
	if n := r.heldBytes(); n != 0 {
		t.Errorf("%d bytes held after expiry", n)
	}
}

// A stream message sent again after a reconnection may be split at
// another limit (docs/protocol.md, "Reassembly"): the receiver drops the
// chunks it holds of the first layout and puts the message together from
// the second alone. A request's chunks are held to the first layout.
func TestReassembleStreamMessageInAnotherLayout(t *testing.T) {
	expiry := uint32(30)
	payload := make([]byte, 5000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	p := &paho.Publish{QoS: 1, Topic: "mqttrpc/responses/c", Payload: payload, Properties: &paho.PublishProperties{
		CorrelationData: []byte("0123456789abcdef"), MessageExpiry: &expiry, User: paho.UserProperties{{Key: propSeq, Value: "3"}},
	}}
	first, err := splitIntoChunks(p, 1000)
	if err != nil {
		t.Fatal(err)
	}
	second, err := splitIntoChunks(p, 700)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) == len(second) {
		t.Fatalf("both limits make %d chunks", len(first))
	}
	add := func(r *reassembly, seq int64, c *paho.Publish) chunkResult {
		return r.add(chunkKey{call: "c", seq: seq}, c, readChunk(c), time.Now(), time.Now().Add(time.Minute), seq < 0)
	}
	r := newReassembly(len(payload), 0, "test")
	for _, c := range first[:len(first)-1] { // all but one came before the drop
		if res := add(r, 3, c); res.outcome != chunkKept {
			t.Fatalf("first layout: outcome %v", res.outcome)
		}
	}
	var whole *paho.Publish
	for i := len(second) - 1; i >= 0; i-- { // sent again, in another order
		switch res := add(r, 3, second[i]); res.outcome {
		case chunkComplete:
			if i != 0 {
				t.Fatalf("complete at chunk %d of the second layout, before all of it came", i)
			}
			whole = res.message
		case chunkKept:
		default:
			t.Fatalf("second layout, chunk %d: outcome %v (%v)", i, res.outcome, res.err)
		}
	}
	if whole == nil || !bytes.Equal(whole.Payload, payload) {
		t.Fatal("the message sent again in another layout did not come back whole")
	}
	if h := r.heldBytes(); h != 0 {
		t.Errorf("%d bytes held after completion", h)
	}

	// A request (no stream message) in two layouts is malformed.
	r = newReassembly(len(payload), 0, "test")
	if res := add(r, -1, first[0]); res.outcome != chunkKept {
		t.Fatalf("request, first layout: outcome %v", res.outcome)
	}
	if res := add(r, -1, second[1]); res.outcome != chunkRefused {
		t.Fatalf("request, second layout: outcome %v, want refused", res.outcome)
	}
	// A stream message's chunk of another size is malformed too.
	r = newReassembly(len(payload)+1, 0, "test")
	other := *p
	other.Payload = append(payload[:len(payload):len(payload)], 0)
	bigger, err := splitIntoChunks(&other, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if res := add(r, 3, first[0]); res.outcome != chunkKept {
		t.Fatalf("outcome %v", res.outcome)
	}
	if res := add(r, 3, bigger[1]); res.outcome != chunkRefused {
		t.Fatalf("a chunk of another size: outcome %v, want refused", res.outcome)
	}
}
