package testbroker

import (
	"fmt"
	"log/slog"
	"math"
	"net"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// sysTopicInterval is how often mochi refreshes $SYS topics, in seconds. Each
// refresh reads runtime.MemStats, which stops the world; nothing here needs
// fresh $SYS values, so it is rare (mochi's default: every second).
const sysTopicInterval = 3600

// capabilities returns mochi's default capabilities with the limits that
// matter for load tests raised, so that 1,000 (and many more) concurrent QoS 1
// calls from one client never meet a limit.
func capabilities() *mqtt.Capabilities {
	c := mqtt.NewDefaultServerCapabilities()
	// Receive Maximum announced in CONNACK: unacknowledged QoS 1 and 2
	// publishes a client may send (mochi: 1024).
	c.ReceiveMaximum = math.MaxUint16
	// Outgoing QoS 1 and 2 messages awaiting a client's ack; beyond this mochi
	// drops messages for that client. It also caps the client's own Receive
	// Maximum (mochi: 8192).
	c.MaximumInflight = math.MaxUint16
	// Packets queued for a client's writer; when full, mochi drops messages
	// (mochi: 8192).
	c.MaximumClientWritesPending = 16 * 1024
	// No cap. With a cap (mochi: 86400 s), mochi gives every message sent
	// without an expiry the cap as its Message Expiry Interval.
	c.MaximumMessageExpiryInterval = 0
	// Acks must not echo the PUBLISH's user properties.
	c.Compatibilities.NoInheritedPropertiesOnAck = true
	return c
}

// instance is one running mochi server. Restart replaces it.
type instance struct {
	server   *mqtt.Server
	listener *trackingListener
	hook     *faultHook
}

// startInstance serves MQTT on ln, which it owns from then on.
func startInstance(ln net.Listener, faults *faultTable, wills *willHolds, log, packetLog *slog.Logger, maxPacketSize uint32) (*instance, error) {
	caps := capabilities()
	caps.MaximumPacketSize = maxPacketSize
	server := mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		Logger:                 log,
		SysTopicResendInterval: sysTopicInterval,
	})
	hook := newFaultHook(server, faults)
	hook.wills = wills
	hook.maxPacketSize = maxPacketSize
	gate := newSessionGateHook()
	listener := newTrackingListener("testbroker", ln, gate.connectionDone)
	err := server.AddHook(new(allowAllHook), nil)
	if err == nil {
		err = server.AddHook(hook, nil)
	}
	if err == nil {
		err = server.AddHook(gate, nil)
	}
	if err == nil && packetLog != nil {
		err = server.AddHook(&packetLogHook{log: packetLog}, nil)
	}
	if err == nil {
		err = server.AddListener(listener)
	}
	if err == nil {
		err = server.Serve() // returns once the listener serves on its own goroutine
	}
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("testbroker: start mochi: %w", err)
	}
	return &instance{server: server, listener: listener, hook: hook}, nil
}

// close stops the server: pending delayed deliveries are cancelled, client
// connections are cut, and every connection and client goroutine is gone when
// it returns.
func (in *instance) close() error {
	in.hook.stop()
	return in.server.Close()
}
