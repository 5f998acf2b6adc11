package mosquittotest

// Option configures a broker started by Start.
type Option interface {
	apply(*config)
}

// config holds what the options set.
type config struct {
	noDelay     bool
	anonymous   bool
	persistence bool
	extra       []string
	bridges     []bridge
}

// bridge is a connection to another broker (WithBridge).
type bridge struct {
	addr   string
	topics []string
}

func defaultConfig() config {
	return config{noDelay: true, anonymous: true}
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// WithNoDelay sets Mosquitto's set_tcp_nodelay. The default, true, turns off
// Nagle's algorithm on client sockets; with false (Mosquitto's own default) an
// answer that follows a PUBACK on the same socket waits for the peer's delayed
// ACK, about 40 ms on Linux.
func WithNoDelay(on bool) Option {
	return optionFunc(func(c *config) { c.noDelay = on })
}

// WithAnonymous sets allow_anonymous: whether clients may connect without a
// username. The default is true; set false with a password_file in WithConfig.
func WithAnonymous(on bool) Option {
	return optionFunc(func(c *config) { c.anonymous = on })
}

// WithConfig appends raw mosquitto.conf lines after the generated listener
// section, e.g. "password_file /path", "acl_file /path", "certfile /path".
// Options given later override earlier ones, as Mosquitto reads the file.
func WithConfig(lines ...string) Option {
	return optionFunc(func(c *config) { c.extra = append(c.extra, lines...) })
}

// WithPersistence turns on Mosquitto's persistence, in a file in the test's
// temporary directory: retained messages, and the sessions and
// subscriptions of clients with a session expiry, survive Restart.
// Mosquitto writes the file when it stops (Restart and Stop send SIGTERM).
// Default: off, and a restart loses everything.
func WithPersistence() Option {
	return optionFunc(func(c *config) { c.persistence = true })
}

// WithBridge makes the broker bridge to the broker at addr ("host:port",
// another Broker's Addr): an MQTT v5 bridge with a clean session that
// keeps the retain flag of what it forwards. Each topic is the argument of
// a mosquitto.conf "topic" line: a filter alone is carried both ways at
// QoS 1 ("mqttrpc/#"), or the filter, direction and QoS are given
// ("mqttrpc/_presence/+ in 1": from the other broker to this one). The
// bridge connects after Start returns, and reconnects within about a
// second when it is lost. Without topics it carries "#".
func WithBridge(addr string, topics ...string) Option {
	if len(topics) == 0 {
		topics = []string{"#"}
	}
	return optionFunc(func(c *config) { c.bridges = append(c.bridges, bridge{addr: addr, topics: topics}) })
}
