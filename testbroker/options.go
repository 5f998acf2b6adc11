package testbroker

import "log/slog"

// Option configures a Broker created by New or Start.
type Option interface {
	apply(*config)
}

// config holds what the options set.
type config struct {
	addr      string
	logger    *slog.Logger
	packetLog *slog.Logger // nil: packets are not logged
	// maxPacketSize is the Maximum Packet Size the broker announces and
	// enforces; 0: none.
	maxPacketSize uint32
}

func defaultConfig() config {
	return config{
		addr:   "127.0.0.1:0",
		logger: slog.New(slog.DiscardHandler),
	}
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// WithAddr sets the TCP address the broker listens on, e.g. "127.0.0.1:1883".
// The default, "127.0.0.1:0", picks a free loopback port.
func WithAddr(addr string) Option {
	return optionFunc(func(c *config) { c.addr = addr })
}

// WithLogger sends the broker's logs (mochi's and the fault injector's) to l.
// The default discards everything. A nil l keeps the default.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(c *config) {
		if l != nil {
			c.logger = l
		}
	})
}

// WithMaxPacketSize makes the broker announce n as its Maximum Packet Size
// in CONNACK (MQTT 5 property 0x27) and close the connection of a client
// that sends a larger packet, as Mosquitto does with max_packet_size. mochi
// enforces the limit but does not announce it; testbroker adds it to
// CONNACK. The default, 0, is no limit.
func WithMaxPacketSize(n uint32) Option {
	return optionFunc(func(c *config) { c.maxPacketSize = n })
}

// WithPacketLog logs every MQTT packet the broker receives and sends to l,
// one line each: type, client, and for a PUBLISH its topic, QoS, packet ID,
// size and properties (never payloads or passwords). For people watching a
// session; the default logs none. A nil l keeps the default.
func WithPacketLog(l *slog.Logger) Option {
	return optionFunc(func(c *config) { c.packetLog = l })
}
