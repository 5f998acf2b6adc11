package testbroker

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// OnSessionEstablished turns off mochi's flow control towards the client
// before mochi reads the client's first packet. When a client announces a
// Receive Maximum, mochi releases held messages through Inflight.NextImmediate,
// which read-locks twice and deadlocks the client's read loop (and the
// publisher's) when a message for that client arrives at the same moment.
// Without it, the broker sends QoS 1 and 2 messages as they come and the
// client's own backpressure (TCP) applies: paho blocks its reader when its
// Receive Maximum worth of messages is waiting for handlers.
func (h *faultHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	cl.State.Inflight.ResetSendQuota(0)
}
