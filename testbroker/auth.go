package testbroker

import (
	"bytes"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// allowAllHook lets every client connect and use every topic. It is mochi's
// auth.AllowHook, restated because that package drags in a YAML dependency.
type allowAllHook struct {
	mqtt.HookBase
}

// ID identifies the hook in mochi's logs.
func (h *allowAllHook) ID() string { return "testbroker-allow-all" }

// Provides tells mochi which hook methods to call.
func (h *allowAllHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}

// OnConnectAuthenticate accepts every client.
func (h *allowAllHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

// OnACLCheck allows every topic for reading and writing.
func (h *allowAllHook) OnACLCheck(*mqtt.Client, string, bool) bool { return true }
