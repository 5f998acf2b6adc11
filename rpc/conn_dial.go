package rpc

// How a Conn is made: Dial (the Conn owns its autopaho connection manager),
// NewConnection (over the application's own configuration), and the
// configuration their options fill.

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"os"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session/state"
	"github.com/google/uuid"

	"github.com/mqttrpc/mqttrpc/internal/transport"
)

// DefaultDialTimeout is how long Dial waits for the first connection unless
// WithDialTimeout says otherwise.
const DefaultDialTimeout = 5 * time.Second

// Dial connects to the broker at brokerURL and waits until the connection is
// up, ctx ends or the dial timeout passes (WithDialTimeout, default 5 s);
// then it fails with Unavailable, naming the URL and the last connect
// error. A broker that refuses the login ends Dial at once: CONNACK 0x86
// (bad user name or password) and 0x8C (bad authentication method) with
// Unauthenticated, 0x87 (not authorized) and 0x8A (banned) with
// PermissionDenied, 0x85 (client identifier not valid) with
// InvalidArgument, 0x84 (unsupported protocol version) with
// FailedPrecondition.
//
// Schemes: mqtt:// and tcp:// (plain TCP, port 1883 by default), mqtts://,
// tls:// and ssl:// (TLS, see WithTLSConfig), ws:// and wss:// (WebSocket).
// Credentials in the URL (mqtt://user:password@host) are sent in CONNECT
// unless WithCredentials is given; the password is never logged nor put in
// an error. The connection is re-established after every loss until Close.
func Dial(ctx context.Context, brokerURL string, opts ...ConnOption) (*Conn, error) {
	cfg := connConfig{
		keepAlive:      30,
		connectTimeout: 10 * time.Second,
		dialTimeout:    DefaultDialTimeout,
		logger:         discardLogger(),
	}
	for _, o := range opts {
		o.applyToConn(&cfg)
	}
	u, err := url.Parse(brokerURL)
	if err != nil {
		// url.Error repeats the URL, password included.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, Errorf(InvalidArgument, "broker URL: %v", err)
	}
	if u.User != nil {
		if !cfg.credentialsSet {
			cfg.username = u.User.Username()
			if password, ok := u.User.Password(); ok {
				cfg.password = []byte(password)
			}
		}
		// Into CONNECT only: autopaho prints the URL in its errors.
		u.User = nil
	}
	switch u.Scheme {
	case "mqtt", "tcp", "mqtts", "tls", "ssl", "ws", "wss":
	default:
		return nil, Errorf(InvalidArgument, "broker URL %q: scheme must be mqtt, mqtts, tcp, tls, ssl, ws or wss", u.Redacted())
	}
	if u.Port() == "" && (u.Scheme == "mqtt" || u.Scheme == "tcp") {
		u.Host += ":1883"
	} else if u.Port() == "" && (u.Scheme == "mqtts" || u.Scheme == "tls" || u.Scheme == "ssl") {
		u.Host += ":8883"
	}
	if cfg.clientID == "" {
		cfg.clientID = "mqttrpc-" + uuid.NewString()[:13]
	}
	if err := checkID("client ID", cfg.clientID); err != nil {
		return nil, err
	}
	apCfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		TlsCfg:                        cfg.tlsConfig,
		KeepAlive:                     cfg.keepAlive,
		CleanStartOnInitialConnection: cfg.sessionExpiry == 0,
		SessionExpiryInterval:         cfg.sessionExpiry,
		ConnectTimeout:                cfg.connectTimeout,
		ReconnectBackoff:              autopaho.NewExponentialBackoff(100*time.Millisecond, 5*time.Second, 200*time.Millisecond, 2),
		ConnectUsername:               cfg.username,
		ConnectPassword:               cfg.password,
		ClientConfig:                  paho.ClientConfig{ClientID: cfg.clientID},
		// paho sizes a channel by the Receive Maximum it announces: 65,535
		// slots (512 KiB) per connection when it announces none.
		ConnectPacketBuilder: func(cp *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			if cp.Properties == nil {
				cp.Properties = &paho.ConnectProperties{}
			}
			receiveMax := uint16(4096)
			cp.Properties.ReceiveMaximum = &receiveMax
			return cp, nil
		},
	}
	if cfg.ackAfterHandling == nil {
		on := cfg.sessionExpiry > 0
		cfg.ackAfterHandling = &on
	}
	apCfg.EnableManualAcknowledgment = *cfg.ackAfterHandling
	if tc := cfg.transportConfig(); (tc.Coalesce || tc.QuickAck) && (u.Scheme == "mqtt" || u.Scheme == "tcp") && os.Getenv("all_proxy") == "" {
		// Plain TCP through the transport (internal/transport); autopaho's
		// own dialer otherwise (TLS, WebSocket, a proxy).
		cfg.dialed = &dialedConn{}
		apCfg.AttemptConnection = func(ctx context.Context, ac autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
			nc, err := transport.Dial(ctx, u.Host, ac.ConnectTimeout, tc)
			if err == nil {
				cfg.dialed.nc.Store(&nc)
			}
			return nc, err
		}
	}
	c, err := newConn(apCfg, &cfg, true)
	if err != nil {
		return nil, err
	}
	waitCtx := ctx
	if cfg.dialTimeout > 0 {
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithTimeout(ctx, cfg.dialTimeout)
		defer cancel()
	}
	if err := c.AwaitConnection(waitCtx); err != nil {
		_ = c.Close(context.Background())
		if ctx.Err() == nil && waitCtx.Err() != nil && CodeOf(err) == Unavailable && !errors.Is(err, context.DeadlineExceeded) {
			err = c.notConnected("no connection to the broker %s within the dial timeout (%v)", c.broker, cfg.dialTimeout)
		}
		return nil, err
	}
	return c, nil
}

// NewConnection starts an autopaho connection manager from the
// application's own configuration and returns the Conn over it. The
// application keeps full use of the manager (Manager): its own
// OnPublishReceived handlers, OnConnectionUp, OnConnectionDown and
// OnConnectError still run (after mqttrpc's), and its ReconnectBackoff is
// used, lengthened after a takeover as described at Conn. cfg.ClientID must
// be set: it names the client's response topic. Unlike Dial, NewConnection
// does not wait for the connection; see AwaitConnection.
//
// Of the ConnOptions only WithLogger and WithPresence apply (presence is
// off unless WithPresence(true) is given and cfg has no WillMessage of its
// own; the application's handlers then also see the presence traffic,
// with AlreadyHandled set): the others configure what
// cfg already holds (ClientID, ConnectUsername, TlsCfg, KeepAlive,
// SessionExpiryInterval, EnableManualAcknowledgment…), and NewConnection
// fails with InvalidArgument if one is given. ctx is not used; the
// manager lives until the application disconnects it.
//
// mqttrpc cannot attach to a manager that was started elsewhere, because
// autopaho forgets handlers added with AddOnPublishReceived at the next
// reconnect.
func NewConnection(_ context.Context, cfg autopaho.ClientConfig, opts ...ConnOption) (*Conn, error) {
	cc := connConfig{logger: discardLogger()}
	for _, o := range opts {
		switch o.(type) {
		case loggerOption, presenceOption:
		default:
			return nil, Errorf(InvalidArgument, "NewConnection takes no ConnOption but WithLogger and WithPresence: set the autopaho.ClientConfig instead")
		}
		o.applyToConn(&cc)
	}
	if err := checkID("client ID", cfg.ClientID); err != nil {
		return nil, err
	}
	return newConn(cfg, &cc, false)
}

// newConn starts the connection manager. Its lifetime is the Conn's, not
// that of any caller's context: autopaho stops for good when the context
// given to NewConnection ends.
func newConn(cfg autopaho.ClientConfig, cc *connConfig, owned bool) (*Conn, error) {
	c := &Conn{
		clientID:  cfg.ClientID,
		owned:     owned,
		manualAck: cfg.EnableManualAcknowledgment,
		logger:    cc.logger,
		beforeUp:  cc.beforeUp,
		parkTime:  cmp.Or(cc.parkTime, parkTime),
		onParked:  cc.onParked,
		dialed:    cc.dialed,
		subs:      map[string]paho.SubscribeOptions{},
		changed:   make(chan struct{}),
		stopped:   make(chan struct{}),
	}
	if len(cfg.ServerUrls) > 0 {
		display := *cfg.ServerUrls[0]
		display.User = nil
		if cfg.ConnectUsername != "" {
			display.User = url.User(cfg.ConnectUsername)
		}
		c.broker = display.String()
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.listeners.Store(&[]*listener{})
	c.setupFleet(&cfg, cc, owned)

	// autopaho falls back on the deprecated ConnectRetryDelay when
	// ReconnectBackoff is nil; since we set ReconnectBackoff, we do that.
	//lint:ignore SA1019 an application's NewConnection config may still set it
	retryDelay := cfg.ConnectRetryDelay
	switch {
	case cfg.ReconnectBackoff != nil:
		c.backoff = cfg.ReconnectBackoff
	case retryDelay != 0:
		c.backoff = autopaho.NewConstantBackoff(retryDelay)
	default:
		c.backoff = autopaho.NewConstantBackoff(10 * time.Second) // autopaho's default
	}
	cfg.ReconnectBackoff = c.reconnectDelay

	userUp, userDown, userConnErr := cfg.OnConnectionUp, cfg.OnConnectionDown, cfg.OnConnectError
	cfg.OnConnectionUp = func(cm *autopaho.ConnectionManager, ack *paho.Connack) {
		c.connectionUp(cm, ack)
		c.hooks.connectionUp(c)
		if userUp != nil {
			userUp(cm, ack)
		}
	}
	cfg.OnConnectionDown = func() bool {
		c.connectionDown()
		c.hooks.connectionDown(c)
		if userDown != nil {
			return userDown()
		}
		return true
	}
	cfg.OnConnectError = func(err error) {
		c.connectFailed(err)
		if userConnErr != nil {
			userConnErr(err)
		}
	}
	cfg.OnPublishReceived = append([]func(paho.PublishReceived) (bool, error){c.route}, cfg.OnPublishReceived...)
	if cfg.Session == nil {
		cfg.Session = state.NewInMemory() // what autopaho would make
	}
	c.session = newSessionGuard(cfg.Session)
	cfg.Session = c.session

	cm, err := autopaho.NewConnection(c.ctx, cfg)
	if err != nil {
		c.cancel()
		return nil, Errorf(InvalidArgument, "connection config: %w", err)
	}
	c.cm = cm
	return c, nil
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// connConfig collects ConnOptions.
type connConfig struct {
	clientID          string
	username          string
	password          []byte
	credentialsSet    bool // WithCredentials was given: URL credentials are ignored
	tlsConfig         *tls.Config
	keepAlive         uint16
	connectTimeout    time.Duration
	dialTimeout       time.Duration
	sessionExpiry     uint32
	ackAfterHandling  *bool
	writeCoalescing   *bool
	quickAck          *bool
	quickAckFromStart bool
	logger            *slog.Logger
	presence          *bool         // WithPresence; default on
	onUp              func()        // WithOnConnectionUp
	onDown            func(error)   // WithOnConnectionDown
	beforeUp          func()        // tests: runs at the start of connectionUp
	parkTime          time.Duration // tests: how long packets stay parked (0: parkTime)
	onParked          func(n int)   // tests: see Conn.onParked
	dialed            *dialedConn   // set by Dial when it dials through internal/transport
}

// transportConfig returns the transport options with their defaults.
func (c *connConfig) transportConfig() transport.Config {
	tc := transport.Config{Coalesce: true, QuickAck: true}
	if c.writeCoalescing != nil {
		tc.Coalesce = *c.writeCoalescing
	}
	if c.quickAck != nil {
		tc.QuickAck = *c.quickAck && transport.QuickAckSupported
	}
	tc.QuickAckFromStart = tc.QuickAck && c.quickAckFromStart
	return tc
}
