package rpc

import (
	"testing"

	"github.com/eclipse/paho.golang/paho"
)

// A chunked message is kept whole in the replay buffer and counts with
// its whole payload against replayBytes; the newest message stays.
func TestReplayKeepsLargeMessagesWhole(t *testing.T) {
	var r replay
	big := 6 << 20
	for seq := range int64(4) {
		r.add(seq, &paho.Publish{Topic: "t", Properties: &paho.PublishProperties{}, Payload: make([]byte, big)})
	}
	// 4 × 6 MiB: the oldest go until at most 16 MiB are kept.
	if got := r.payloadBytes(); got != 2*big {
		t.Fatalf("%d bytes kept, want %d", got, 2*big)
	}
	msgs, missing := r.from(2, 10)
	if missing || len(msgs) != 2 || len(msgs[0].Payload) != big {
		t.Fatalf("from 2: %d messages, missing %v", len(msgs), missing)
	}
	if _, missing := r.from(1, 10); !missing {
		t.Fatal("message 1 was dropped over the limit, but a resend from it misses nothing")
	}
	r.ack(4)
	if got := r.payloadBytes(); got != 0 {
		t.Fatalf("%d bytes kept after everything was acknowledged", got)
	}
}
