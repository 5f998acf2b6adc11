package rpc

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session/state"
	"github.com/google/uuid"

	"github.com/mqttrpc/mqttrpc/internal/transport"
)

// Conn is a connection to an MQTT 5 broker that Clients and Servers share.
// It reconnects by itself (autopaho), restores their subscriptions after a
// reconnect and hands each received PUBLISH to the Client or Server it
// belongs to. One Conn may carry any number of Clients and Servers along with
// the application's own traffic (Manager).
//
// A connection that the broker takes over for another client with the same
// client ID (DISCONNECT 0x8E), or that drops within a second of being made
// (what a takeover looks like on brokers that send no DISCONNECT, such as
// Mosquitto 2.0), is logged at Warn and reconnected after an exponential
// backoff with jitter (a quarter of a second, doubling up to 30 s), so that
// two processes sharing an ID do not take each other's session over
// thousands of times a second.
type Conn struct {
	cm       *autopaho.ConnectionManager
	clientID string
	broker   string // the broker's URL without password, for messages
	owned    bool   // Close disconnects cm
	// manualAck: requests are acknowledged to the broker after they were
	// handled, so that a persistent session redelivers them if the server
	// dies meanwhile.
	manualAck bool
	logger    *slog.Logger
	// backoff is the delay before reconnect attempt n (0: the first after a
	// loss) when no takeover is suspected.
	backoff func(attempt int) time.Duration
	// beforeUp runs at the start of connectionUp; tests use it to hold a
	// connection between CONNACK and OnConnectionUp.
	beforeUp func()

	// listeners is a copy-on-write list read on paho's receive goroutine
	// without locking.
	listeners   atomic.Pointer[[]*listener]
	listenersMu sync.Mutex
	// parked holds QoS 1/2 packets nobody claimed yet, on a Conn made by
	// Dial: a persistent session's redelivered requests arrive right after
	// CONNACK, before the application has started its Server. They are
	// replayed to each new listener and acknowledged when they expire, or
	// at once when a subscription of the Conn covers them (its listener had
	// its chance). See park.
	parked    []parkedPublish
	parkTimer *time.Timer // releases parked packets whose time is up; guarded by listenersMu
	parkTime  time.Duration
	// onParked (tests) is told the number of parked packets whenever it may
	// have changed, under listenersMu; it must not block.
	onParked func(n int)

	mu        sync.Mutex
	up        bool
	closed    bool
	gen       uint64          // connection generation, bumped on every connection up
	genCtx    context.Context // ends when connection gen goes down; nil while down
	genCancel context.CancelFunc
	ops       map[uint64]context.CancelFunc // subscribes on the current connection, cancelled when it goes down
	opSeq     uint64
	readyCh   chan struct{} // closed once subscriptions are restored for gen
	subs      map[string]paho.SubscribeOptions
	lastError error // last connection error, for Dial's message
	// changed is closed and replaced whenever up, refused or closed
	// changes, to wake AwaitConnection.
	changed chan struct{}
	// refused is the permanent refusal (bad credentials, not authorized…)
	// of the last connect attempt; nil once a connection is up.
	refused *Error
	// What the current connection's CONNACK says the broker supports.
	sharedSubs, wildcardSubs, subIDs bool
	// Connection health: when the current connection came up, how many
	// connections in a row ended as (likely) takeovers, and the
	// rate limit of connect-error warnings.
	upSince       time.Time
	takeovers     int
	failsUnwarned int
	lastWarn      time.Time

	session *sessionGuard // ends publishes that paho's session state forgets

	// Fleet (presence.go, fleet.go, conn_hooks.go): the connection's
	// presence record and Will (nil: presence off), the Fleet that
	// Clients on the Conn consult, and the connection callbacks.
	presence *connPresence
	fleet    atomic.Pointer[Fleet]
	hooks    connHooks

	responses responseRouter // the response topic shared by the Conn's Clients

	ctx    context.Context // lives until Close; bounds background subscribes
	cancel context.CancelFunc
	wg     sync.WaitGroup // background subscribes
	// pubs counts the paho Publishes under way (conn_publish.go), on their
	// callers' goroutines or on goroutines of the Conn that may outlive
	// their callers; Add is called under mu while the Conn is not closed.
	pubs       sync.WaitGroup
	publishOps sync.Pool   // of *publishOp, reused once their caller has the result
	dialed     *dialedConn // the current net.Conn when Dial made it through internal/transport; may be nil
	// stopped is closed once, after Close, the manager has stopped and wg
	// and pubs have ended.
	stopped chan struct{}
}

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

// connectFailed records a failed connection attempt. A permanent refusal
// ends AwaitConnection (and Dial) at once; other failures are logged at
// Warn, at most once per connectWarnGap, while autopaho retries.
func (c *Conn) connectFailed(err error) {
	refused := refusal(c.broker, err)
	now := time.Now()
	c.mu.Lock()
	c.lastError = err
	c.failsUnwarned++
	warn := now.Sub(c.lastWarn) >= connectWarnGap
	fails := c.failsUnwarned
	if warn {
		c.lastWarn, c.failsUnwarned = now, 0
	}
	if refused != nil {
		c.refused = refused
		c.wakeLocked()
	}
	c.mu.Unlock()
	msg := describeConnectError(err)
	if warn {
		c.logger.Warn("mqttrpc: cannot connect to the broker; retrying", "client_id", c.clientID, "broker", c.broker, "error", msg, "failed_attempts", fails)
	} else {
		c.logger.Debug("mqttrpc: connect attempt failed", "client_id", c.clientID, "broker", c.broker, "error", msg)
	}
}

// wakeLocked wakes AwaitConnection. c.mu is held.
func (c *Conn) wakeLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// ClientID returns the MQTT client identifier of the connection.
func (c *Conn) ClientID() string { return c.clientID }

// Manager returns the underlying autopaho connection manager, for the
// application's own publishes and subscriptions.
func (c *Conn) Manager() *autopaho.ConnectionManager { return c.cm }

// AwaitConnection waits until the connection is up and every subscription
// made through it is in place. It fails with Unavailable, naming the broker
// and the last connect error, when ctx ends first; at once, with the codes
// listed at Dial, when the broker refused the last attempt for good (the
// manager keeps trying).
func (c *Conn) AwaitConnection(ctx context.Context) error {
	for {
		c.mu.Lock()
		closed, up, ready, refused, changed := c.closed, c.up, c.readyCh, c.refused, c.changed
		c.mu.Unlock()
		if closed {
			return errConnClosed
		}
		if up {
			select {
			case <-ready:
				return nil
			case <-ctx.Done():
				return Errorf(Unavailable, "subscriptions not restored: %w", ctx.Err())
			}
		}
		if refused != nil {
			return refused
		}
		select {
		case <-changed:
		case <-c.cm.Done():
			return Errorf(Unavailable, "not connected to the broker %s: the connection manager has stopped", c.broker)
		case <-ctx.Done():
			return c.notConnected("not connected to the broker %s", c.broker)
		}
	}
}

// notConnected is Unavailable with the message what, followed by the last
// connect error.
func (c *Conn) notConnected(format string, args ...any) *Error {
	c.mu.Lock()
	lastErr := c.lastError
	c.mu.Unlock()
	what := fmt.Sprintf(format, args...)
	if lastErr == nil {
		return Errorf(Unavailable, "%s (no connection attempt finished yet)", what)
	}
	return Errorf(Unavailable, "%s: %s", what, describeConnectError(lastErr))
}

var errConnClosed = Errorf(Unavailable, "connection closed")

// Close disconnects from the broker if the Conn made the connection (Dial);
// with NewConnection the application disconnects its manager itself. Close
// the Clients and shut down the Servers first. If ctx ends before the
// manager has stopped, Close returns ctx's error and the manager stops on
// its own soon after; calling Close again waits for that.
func (c *Conn) Close(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return c.waitStopped(ctx)
	}
	c.closed = true
	if c.genCancel != nil {
		c.genCancel()
		c.cancelOps()
	}
	c.wakeLocked()
	c.mu.Unlock()
	c.cancel()
	c.listenersMu.Lock()
	if c.parkTimer != nil {
		c.parkTimer.Stop()
		c.parkTimer = nil
	}
	c.parked = nil // the broker redelivers what the session keeps
	c.listenersMu.Unlock()
	if !c.owned {
		c.wg.Wait()
		// A publish left by its caller ends once paho's write is through,
		// or the application disconnects its manager. Close owns this
		// goroutine: a later Close waits for c.stopped.
		go func() {
			c.pubs.Wait()
			c.waitFleet()
			close(c.stopped)
		}()
		return nil
	}
	err := c.cm.Disconnect(ctx)
	// The manager stops on its own once c.ctx is cancelled, and must have
	// stopped before the session guard ends the publishes still waiting.
	// Close owns this goroutine: it waits for c.stopped, now or, when ctx
	// ended first, at its next call.
	go func() {
		<-c.cm.Done()
		c.session.close()
		c.wg.Wait()
		c.pubs.Wait() // paho's writes fail once the manager has stopped
		c.waitFleet()
		close(c.stopped)
	}()
	if err != nil {
		return err
	}
	return c.waitStopped(ctx)
}

// waitStopped waits until the manager of a closed Conn has stopped and its
// background work is done, or ctx ends.
func (c *Conn) waitStopped(ctx context.Context) error {
	select {
	case <-c.stopped:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// connectionUp runs on autopaho's goroutine and must not block: it restores
// the subscriptions in the background.
func (c *Conn) connectionUp(cm *autopaho.ConnectionManager, ack *paho.Connack) {
	if c.beforeUp != nil {
		c.beforeUp()
	}
	c.mu.Lock()
	c.gen++
	gen := c.gen
	c.up = true
	c.refused = nil
	c.upSince = time.Now()
	c.failsUnwarned = 0
	c.sharedSubs, c.wildcardSubs, c.subIDs = true, true, true
	if ack.Properties != nil {
		c.sharedSubs, c.wildcardSubs, c.subIDs = ack.Properties.SharedSubAvailable, ack.Properties.WildcardSubAvailable, ack.Properties.SubIDAvailable
	}
	if c.genCancel != nil {
		c.genCancel()
		c.cancelOps()
	}
	c.genCtx, c.genCancel = context.WithCancel(c.ctx)
	ready := make(chan struct{})
	c.readyCh = ready
	c.wakeLocked()
	subs := make([]paho.SubscribeOptions, 0, len(c.subs))
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return
	}
	c.logger.Debug("mqttrpc: connected", "client_id", c.clientID, "session_present", ack.SessionPresent, "subscriptions", len(subs))
	if len(subs) == 0 {
		close(ready)
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(ready)
		// Resubscribing is harmless when the session survived, and covers
		// brokers that lost it despite SessionPresent.
		ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
		defer cancel()
		for start := 0; start < len(subs); start += maxFiltersPerSubscribe {
			batch := subs[start:min(start+maxFiltersPerSubscribe, len(subs))]
			if err := c.sendSubscribe(ctx, cm, batch); err != nil {
				c.mu.Lock()
				stale := c.gen != gen
				c.mu.Unlock()
				if !stale {
					c.logger.Error("mqttrpc: restoring subscriptions failed", "error", err)
				}
				return
			}
		}
	}()
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
