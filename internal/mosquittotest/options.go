package mosquittotest

// Option configures a broker started by Start.
type Option interface {
	apply(*config)
}

// config holds what the options set.
type config struct {
	noDelay   bool
	anonymous bool
	extra     []string
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
