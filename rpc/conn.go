package rpc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session/state"
	"github.com/google/uuid"
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

	responses responseRouter // the response topic shared by the Conn's Clients

	ctx    context.Context // lives until Close; bounds background subscribes
	cancel context.CancelFunc
	wg     sync.WaitGroup // background subscribes
	// stopped is closed once, after Close, the manager has stopped and wg
	// has ended.
	stopped chan struct{}
}

// listener receives the PUBLISH packets its match function claims.
type listener struct {
	handle func(p *paho.Publish, ack func()) bool
}

// noAck is the ack function when the broker is acknowledged on receipt.
func noAck() {}

type parkedPublish struct {
	p       *paho.Publish
	ack     func()
	expires time.Time
}

// Bounds of the parked packets.
const parkLimit = 1000

var parkTime = 10 * time.Second // a variable for tests

// DefaultDialTimeout is how long Dial waits for the first connection unless
// WithDialTimeout says otherwise.
const DefaultDialTimeout = 5 * time.Second

// Takeover handling (see Conn).
const (
	shortLived      = time.Second            // a connection that ends sooner counts as a likely takeover
	takeoverBackoff = 250 * time.Millisecond // the delay after the first takeover, doubling
	takeoverMax     = 30 * time.Second       // the longest delay
	healthyAfter    = time.Minute            // a connection that lived this long forgets earlier takeovers
	connectWarnGap  = 5 * time.Second        // at most one connect-error warning per gap
)

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
	if tc := cfg.transport(); (tc.coalesce || tc.quickAck) && (u.Scheme == "mqtt" || u.Scheme == "tcp") && os.Getenv("all_proxy") == "" {
		// Plain TCP through the transport (transport.go); autopaho's own
		// dialer otherwise (TLS, WebSocket, a proxy).
		apCfg.AttemptConnection = func(ctx context.Context, ac autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
			return dialTransport(ctx, u.Host, ac.ConnectTimeout, tc)
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
// Of the ConnOptions only WithLogger applies: the others configure what
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
		if _, isLogger := o.(loggerOption); !isLogger {
			return nil, Errorf(InvalidArgument, "NewConnection takes no ConnOption but WithLogger: set the autopaho.ClientConfig instead")
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

	switch {
	case cfg.ReconnectBackoff != nil:
		c.backoff = cfg.ReconnectBackoff
	case cfg.ConnectRetryDelay != 0:
		c.backoff = autopaho.NewConstantBackoff(cfg.ConnectRetryDelay)
	default:
		c.backoff = autopaho.NewConstantBackoff(10 * time.Second) // autopaho's default
	}
	cfg.ReconnectBackoff = c.reconnectDelay

	userUp, userDown, userConnErr := cfg.OnConnectionUp, cfg.OnConnectionDown, cfg.OnConnectError
	cfg.OnConnectionUp = func(cm *autopaho.ConnectionManager, ack *paho.Connack) {
		c.connectionUp(cm, ack)
		if userUp != nil {
			userUp(cm, ack)
		}
	}
	cfg.OnConnectionDown = func() bool {
		c.connectionDown()
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

// reconnectDelay is the ReconnectBackoff given to autopaho: the configured
// backoff, lengthened while connections end as takeovers.
func (c *Conn) reconnectDelay(attempt int) time.Duration {
	c.mu.Lock()
	n := c.takeovers
	c.mu.Unlock()
	d := c.backoff(attempt)
	if n > 0 {
		d = max(d, takeoverDelay(n))
	}
	return d
}

// takeoverDelay is the wait before reconnecting after the n-th takeover in
// a row: random in [d/2, d] with d = 250 ms · 2^(n-1), at most 30 s. The
// jitter keeps two processes with one ID from meeting in lockstep.
func takeoverDelay(n int) time.Duration {
	d := takeoverBackoff
	for i := 1; i < n && d < takeoverMax; i++ {
		d *= 2
	}
	d = min(d, takeoverMax)
	return d/2 + rand.N(d/2+1)
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

// connackReasonTexts names the CONNACK reason codes.
var connackReasonTexts = map[byte]string{
	0x80: "unspecified error",
	0x81: "malformed packet",
	0x82: "protocol error",
	0x83: "implementation specific error",
	0x84: "unsupported protocol version",
	0x85: "client identifier not valid",
	0x86: "bad user name or password",
	0x87: "not authorized",
	0x88: "server unavailable",
	0x89: "server busy",
	0x8A: "banned",
	0x8C: "bad authentication method",
	0x90: "topic name invalid",
	0x95: "packet too large",
	0x97: "quota exceeded",
	0x99: "payload format invalid",
	0x9A: "retain not supported",
	0x9B: "QoS not supported",
	0x9C: "use another server",
	0x9D: "server moved",
	0x9F: "connection rate exceeded",
}

// connackCodes are the CONNACK refusals that retrying does not cure, and
// their codes.
var connackCodes = map[byte]Code{
	0x84: FailedPrecondition, // the broker does not speak MQTT 5
	0x85: InvalidArgument,
	0x86: Unauthenticated,
	0x87: PermissionDenied,
	0x8A: PermissionDenied,
	0x8C: Unauthenticated,
}

// refusal returns the error for a permanent CONNACK refusal, or nil.
func refusal(broker string, err error) *Error {
	var ce *autopaho.ConnackError
	if !errors.As(err, &ce) {
		return nil
	}
	code, permanent := connackCodes[ce.ReasonCode]
	if !permanent {
		return nil
	}
	return Errorf(code, "broker %s refused the connection: %s", broker, describeConnectError(err))
}

// describeConnectError says in words why a connect attempt failed.
func describeConnectError(err error) string {
	var ce *autopaho.ConnackError
	if !errors.As(err, &ce) {
		return err.Error()
	}
	text, ok := connackReasonTexts[ce.ReasonCode]
	if !ok {
		text = "refused"
	}
	msg := fmt.Sprintf("%s (CONNACK 0x%02x)", text, ce.ReasonCode)
	if ce.Reason != "" {
		msg += ": " + ce.Reason
	}
	return msg
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
		close(c.stopped)
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

// maxFiltersPerSubscribe keeps SUBSCRIBE packets small.
const maxFiltersPerSubscribe = 32

// connectionDown runs on autopaho's goroutine when a connection has ended,
// before it reconnects (after reconnectDelay). A connection the broker took
// over, or one that ended soon after it was made, counts as a takeover.
func (c *Conn) connectionDown() {
	reason, byBroker := c.session.disconnectReason()
	c.mu.Lock()
	c.up = false
	if c.genCancel != nil {
		c.genCancel()
		c.cancelOps()
	}
	c.genCtx, c.genCancel = nil, nil
	lived := time.Since(c.upSince)
	takenOver := byBroker && reason == 0x8E
	if lived >= healthyAfter {
		c.takeovers = 0
	}
	suspect := takenOver || lived < shortLived
	if suspect && !c.closed {
		c.takeovers++
	} else {
		c.takeovers = 0
	}
	n, closed := c.takeovers, c.closed
	c.wakeLocked()
	c.mu.Unlock()
	switch {
	case closed:
	case takenOver:
		c.logger.Warn("mqttrpc: the broker handed the session to another client with the same client ID (DISCONNECT 0x8E); reconnecting with backoff",
			"client_id", c.clientID, "broker", c.broker, "takeovers_in_a_row", n)
	case suspect && byBroker:
		c.logger.Warn("mqttrpc: the broker disconnected soon after connecting; reconnecting with backoff",
			"client_id", c.clientID, "broker", c.broker, "reason", fmt.Sprintf("0x%02x (%s)", reason, disconnectReasonText(reason)), "lived", lived, "in_a_row", n)
	case suspect:
		c.logger.Warn("mqttrpc: connection lost soon after it was made, likely taken over by another client with the same client ID; reconnecting with backoff",
			"client_id", c.clientID, "broker", c.broker, "lived", lived, "in_a_row", n)
	case byBroker:
		c.logger.Info("mqttrpc: the broker disconnected", "client_id", c.clientID, "reason", fmt.Sprintf("0x%02x (%s)", reason, disconnectReasonText(reason)))
	default:
		c.logger.Debug("mqttrpc: connection lost", "client_id", c.clientID)
	}
}

// disconnectReasonText names the reason of a DISCONNECT from the broker.
func disconnectReasonText(reason byte) string {
	switch reason {
	case 0x8B:
		return "server shutting down"
	case 0x8D:
		return "keep alive timeout"
	case 0x8E:
		return "session taken over"
	case 0x81:
		return "malformed packet"
	case 0x82:
		return "protocol error"
	case 0x93:
		return "receive maximum exceeded"
	case 0x96:
		return "message rate too high"
	case 0x98:
		return "administrative action"
	}
	if s, ok := connackReasonTexts[reason]; ok {
		return s
	}
	return reasonText(reason)
}

// waitReady returns nil once the connection is up and its subscriptions
// restored. While disconnected it fails at once with Unavailable: a call
// should not wait out its deadline for a broker that is not there.
func (c *Conn) waitReady(ctx context.Context) error {
	c.mu.Lock()
	closed, up, ready := c.closed, c.up, c.readyCh
	c.mu.Unlock()
	if closed {
		return errConnClosed
	}
	if !up {
		return errNotConnected
	}
	select {
	case <-ready:
		return nil
	default:
	}
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return contextError(ctx.Err(), "waiting for subscriptions to be restored")
	}
}

// subscribe records filters to be restored after reconnects and subscribes
// now. It fails with Unavailable when not connected (the filters stay
// recorded and are subscribed at the next connection). A refusal by the
// broker is never Unavailable (see subackCode): the filters are forgotten.
func (c *Conn) subscribe(ctx context.Context, subs []paho.SubscribeOptions) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errConnClosed
	}
	for _, s := range subs {
		c.subs[s.Topic] = s
	}
	c.mu.Unlock()
	err := c.sendSubscribe(ctx, c.cm, subs)
	if err != nil && CodeOf(err) != Unavailable {
		c.forget(subs)
	}
	if err == nil {
		c.releaseCovered()
	}
	return err
}

func (c *Conn) forget(subs []paho.SubscribeOptions) {
	c.mu.Lock()
	for _, s := range subs {
		delete(c.subs, s.Topic)
	}
	c.mu.Unlock()
}

func (c *Conn) sendSubscribe(ctx context.Context, cm *autopaho.ConnectionManager, subs []paho.SubscribeOptions) error {
	return c.sendSubscribeRetry(ctx, cm, subs, 0)
}

func (c *Conn) sendSubscribeRetry(ctx context.Context, cm *autopaho.ConnectionManager, subs []paho.SubscribeOptions, retries int) error {
	if err := c.checkSupported(subs); err != nil {
		return err
	}
	opCtx, done := c.operationContext(ctx)
	if opCtx == nil {
		return errNotConnected
	}
	suback, err := cm.Subscribe(opCtx, &paho.Subscribe{Subscriptions: subs})
	done()
	if suback == nil {
		switch {
		case errors.Is(err, paho.ErrInvalidArguments):
			// paho refuses what CONNACK said the broker lacks; the
			// connection may have changed since checkSupported.
			if err := c.checkSupported(subs); err != nil {
				return err
			}
			return Errorf(InvalidArgument, "subscribe: %w", err)
		case ctx.Err() != nil:
			return contextError(ctx.Err(), "subscribing")
		case opCtx.Err() != nil:
			return errConnLost
		case errors.Is(err, autopaho.ConnectionDownError):
			return Errorf(Unavailable, "not connected to the broker")
		default:
			return Errorf(Unavailable, "subscribe: %w", err)
		}
	}
	var again []paho.SubscribeOptions
	for i, reason := range suback.Reasons {
		switch {
		case i >= len(subs) || reason < 0x80:
		case reason == 0x91 && retries < maxIDRetries:
			// Packet identifier in use: mochi counts identifiers of its own
			// PUBLISHes in flight to us (a persistent session's
			// redeliveries) as taken. paho picks the next one.
			again = append(again, subs[i])
		default:
			return Errorf(subackCode(reason), "broker %s refused the subscription to %q: %s (SUBACK 0x%02x)", c.broker, subs[i].Topic, subackText(reason), reason)
		}
	}
	if len(again) > 0 {
		return c.sendSubscribeRetry(ctx, cm, again, retries+1)
	}
	return nil
}

// maxIDRetries bounds the retries of a SUBSCRIBE or UNSUBSCRIBE that the
// broker refused with 0x91 (packet identifier in use).
const maxIDRetries = 8

// checkSupported refuses, with FailedPrecondition, filters that the
// current connection's CONNACK says the broker does not support (paho
// would refuse them with a bare "invalid arguments").
func (c *Conn) checkSupported(subs []paho.SubscribeOptions) error {
	c.mu.Lock()
	up, shared, wildcards := c.up, c.sharedSubs, c.wildcardSubs
	c.mu.Unlock()
	if !up {
		return nil
	}
	for _, s := range subs {
		switch {
		case !shared && strings.HasPrefix(s.Topic, "$share/"):
			return Errorf(FailedPrecondition, "broker %s does not support shared subscriptions (CONNACK Shared Subscription Available: 0), needed for %q: share groups (WithShareGroup, ToAny) need a broker that has them", c.broker, s.Topic)
		case !wildcards && strings.ContainsAny(s.Topic, "+#"):
			return Errorf(FailedPrecondition, "broker %s does not support wildcard subscriptions (CONNACK Wildcard Subscription Available: 0), needed for %q", c.broker, s.Topic)
		}
	}
	return nil
}

// unsubscribe unsubscribes filters if connected and forgets those the
// broker let go. Filters the broker refused to unsubscribe (UNSUBACK 0x80
// and above) stay recorded, and restored after reconnects, since the broker
// still delivers on them; the error names the first with its reason. While
// disconnected the filters are forgotten (a clean session loses them; a
// persistent session keeps them on the broker, and what arrives on them is
// handled as on any unclaimed topic).
func (c *Conn) unsubscribe(ctx context.Context, filters []string) error {
	if len(filters) == 0 {
		return nil
	}
	c.mu.Lock()
	removed := make(map[string]paho.SubscribeOptions, len(filters))
	for _, f := range filters {
		if s, ok := c.subs[f]; ok {
			removed[f] = s
		} else {
			removed[f] = paho.SubscribeOptions{Topic: f, QoS: 2}
		}
		// Not restored if the connection comes back meanwhile.
		delete(c.subs, f)
	}
	up := c.up
	c.mu.Unlock()
	if !up {
		return nil
	}
	opCtx, done := c.operationContext(ctx)
	if opCtx == nil {
		return nil
	}
	unsuback, err := c.cm.Unsubscribe(opCtx, &paho.Unsubscribe{Topics: filters})
	done()
	if unsuback == nil {
		switch {
		case ctx.Err() != nil:
			return contextError(ctx.Err(), "unsubscribing")
		case opCtx.Err() != nil:
			return errConnLost
		}
		return Errorf(Unavailable, "unsubscribe: %w", err)
	}
	var refused *Error
	c.mu.Lock()
	for i, reason := range unsuback.Reasons {
		if reason < 0x80 || i >= len(filters) {
			continue // 0x11, no subscription existed, is no failure either
		}
		if _, again := c.subs[filters[i]]; !again {
			c.subs[filters[i]] = removed[filters[i]]
		}
		if refused == nil {
			refused = Errorf(subackCode(reason), "broker %s refused to unsubscribe %q: %s (UNSUBACK 0x%02x); it still delivers on it", c.broker, filters[i], subackText(reason), reason)
		}
	}
	c.mu.Unlock()
	if refused != nil {
		return refused
	}
	return nil
}

// addListener registers a receiver of PUBLISH packets and returns the
// function that removes it.
// A listener that claims a packet must call ack exactly once when it is done
// with it; the broker is acknowledged then (WithAckAfterHandling).
func (c *Conn) addListener(handle func(p *paho.Publish, ack func()) bool) func() {
	l := &listener{handle: handle}
	c.listenersMu.Lock()
	old := *c.listeners.Load()
	next := append(append(make([]*listener, 0, len(old)+1), old...), l)
	c.listeners.Store(&next)
	// Hand over what arrived before this listener existed.
	parked := c.parked[:0:0]
	for _, pp := range c.parked {
		if !handle(pp.p, pp.ack) {
			parked = append(parked, pp)
		}
	}
	c.parked = parked
	c.listenersMu.Unlock()
	return func() {
		c.listenersMu.Lock()
		defer c.listenersMu.Unlock()
		old := *c.listeners.Load()
		next := make([]*listener, 0, len(old))
		for _, x := range old {
			if x != l {
				next = append(next, x)
			}
		}
		c.listeners.Store(&next)
	}
}

// route runs on paho's receive goroutine for every PUBLISH. Listeners must
// not block.
func (c *Conn) route(pr paho.PublishReceived) (bool, error) {
	if pr.AlreadyHandled {
		return false, nil
	}
	ack := noAck
	if c.manualAck && pr.Packet.QoS > 0 {
		ack = c.ackFunc(pr)
	}
	for _, l := range *c.listeners.Load() {
		if l.handle(pr.Packet, ack) {
			return true, nil
		}
	}
	if c.owned && pr.Packet.QoS > 0 {
		c.park(pr.Packet, ack)
		return true, nil
	}
	return false, nil
}

// park keeps an unclaimed packet for listeners still to come, and lets
// packets past their time or over the limit go (acknowledged: nobody wants
// them). A packet on a topic that a subscription of the Conn covers is
// acknowledged at once instead: the listener that made the subscription
// exists and did not claim it, so nobody will. Since acknowledgements go
// out in order, a parked packet holds back those of every later packet.
func (c *Conn) park(p *paho.Publish, ack func()) {
	if c.covered(p.Topic) {
		ack()
		return
	}
	now := time.Now()
	c.listenersMu.Lock()
	// A listener added since the route began may want it.
	for _, l := range *c.listeners.Load() {
		if l.handle(p, ack) {
			c.listenersMu.Unlock()
			return
		}
	}
	var release []func()
	keep := c.parked[:0]
	for i, pp := range c.parked {
		if now.After(pp.expires) || len(c.parked)-i >= parkLimit {
			release = append(release, pp.ack)
			continue
		}
		keep = append(keep, pp)
	}
	clear(c.parked[len(keep):])
	c.parked = append(keep, parkedPublish{p: p, ack: ack, expires: now.Add(parkTime)})
	c.scheduleReleaseLocked()
	c.listenersMu.Unlock()
	for _, ack := range release {
		ack()
	}
}

// covered reports whether a subscription the Conn made (for a Server or
// the Clients' response topic) matches topic.
func (c *Conn) covered(topic string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for filter := range c.subs {
		if topicMatchesFilter(withoutShare(filter), topic) {
			return true
		}
	}
	return false
}

// withoutShare strips "$share/<group>/" from a filter.
func withoutShare(filter string) string {
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		if _, f, ok := strings.Cut(rest, "/"); ok {
			return f
		}
	}
	return filter
}

// releaseCovered acknowledges the parked packets that a subscription now
// covers: the listener that subscribed was offered them when it was added
// and did not claim them.
func (c *Conn) releaseCovered() {
	c.listenersMu.Lock()
	var release []func()
	keep := c.parked[:0]
	for _, pp := range c.parked {
		if c.covered(pp.p.Topic) {
			release = append(release, pp.ack)
			continue
		}
		keep = append(keep, pp)
	}
	clear(c.parked[len(keep):])
	c.parked = keep
	c.listenersMu.Unlock()
	for _, ack := range release {
		ack()
	}
}

// scheduleReleaseLocked arms the timer that releases the parked packets
// when the oldest one's time is up, so that the broker learns of them even
// if nothing else arrives. c.listenersMu is held.
func (c *Conn) scheduleReleaseLocked() {
	if len(c.parked) == 0 || c.parkTimer != nil {
		return
	}
	c.parkTimer = time.AfterFunc(time.Until(c.parked[0].expires), c.releaseParked)
}

// releaseParked acknowledges and forgets the parked packets whose time is
// up: nobody wanted them.
func (c *Conn) releaseParked() {
	c.listenersMu.Lock()
	c.parkTimer = nil
	now := time.Now()
	var release []func()
	keep := c.parked[:0]
	for _, pp := range c.parked {
		if now.Before(pp.expires) {
			keep = append(keep, pp)
			continue
		}
		release = append(release, pp.ack)
	}
	clear(c.parked[len(keep):])
	c.parked = keep
	c.scheduleReleaseLocked()
	c.listenersMu.Unlock()
	for _, ack := range release {
		ack()
	}
}

// ackFunc returns the function that acknowledges a received PUBLISH, once,
// and only on the connection it arrived on: paho warns that an ack after a
// reconnect may acknowledge an unrelated packet of the new connection.
//
// The connection is the session guard's, counted at CONNACK: paho routes
// the packets a broker sends right after CONNACK (a persistent session's
// redeliveries) before autopaho runs OnConnectionUp, and an ack refused for
// one of them would hold back every later ack, as paho acks in order.
func (c *Conn) ackFunc(pr paho.PublishReceived) func() {
	conn, connected := c.session.connection()
	if !connected {
		return noAck // arrived as its connection ended; the broker redelivers it
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			if c.session.isCurrent(conn) {
				_ = pr.Client.Ack(pr.Packet)
			}
		})
	}
}

// publish sends p and maps every failure to a Code, following DESIGN.md:
// PUBACK 0x10 (no matching subscribers) is Unavailable, 0x87 PermissionDenied,
// 0x97 and 0x95 ResourceExhausted, a connection that is down Unavailable.
//
// The publish waits under ctx itself: when the connection goes down, the
// session guard (session.go) ends it if paho forgets it, and paho resends
// it on the next connection if the session lives on.
func (c *Conn) publish(ctx context.Context, p *paho.Publish) error {
	c.mu.Lock()
	closed, up, gen := c.closed, c.genCtx != nil, c.gen
	c.mu.Unlock()
	switch {
	case closed:
		return errConnClosed
	case !up:
		return errNotConnected
	}
	resp, err := c.cm.Publish(ctx, p)
	if resp != nil && (resp.ReasonCode >= 0x80 || resp.ReasonCode == 0x10) {
		return Errorf(codeForReason(resp.ReasonCode), "broker answered the publish on %q with reason 0x%02x (%s)", p.Topic, resp.ReasonCode, reasonText(resp.ReasonCode))
	}
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return contextError(ctx.Err(), "publishing")
	}
	c.mu.Lock()
	closed, lost := c.closed, c.gen != gen || c.genCtx == nil
	c.mu.Unlock()
	switch {
	case closed:
		return errConnClosed
	case lost:
		return errConnLost
	}
	if errors.Is(err, autopaho.ConnectionDownError) {
		return errNotConnected
	}
	return &Error{code: Unavailable, err: fmt.Errorf("publish on %q failed: %w: %w", p.Topic, errTransport, err)}
}

// errTransport marks failures of the connection, as opposed to answers of
// the broker: worth retrying once the connection is back.
var errTransport = errors.New("connection lost")

var (
	errNotConnected = &Error{code: Unavailable, err: fmt.Errorf("not connected to the broker (%w)", errTransport)}
	errConnLost     = &Error{code: Unavailable, err: fmt.Errorf("connection to the broker lost before the broker acknowledged (%w)", errTransport)}
)

// operationContext returns a context for one subscribe on the
// current connection: it ends with ctx or when this connection goes down,
// since paho may otherwise leave an operation on a dead connection waiting
// until ctx ends. It returns nil while disconnected. Call done afterwards.
func (c *Conn) operationContext(ctx context.Context) (opCtx context.Context, done func()) {
	c.mu.Lock()
	genCtx := c.genCtx
	c.mu.Unlock()
	if genCtx == nil {
		return nil, nil
	}
	opCtx, cancel := context.WithCancel(ctx)
	c.mu.Lock()
	if c.genCtx != genCtx || c.closed { // went down or closed meanwhile
		c.mu.Unlock()
		cancel()
		return opCtx, func() {}
	}
	if c.ops == nil {
		c.ops = map[uint64]context.CancelFunc{}
	}
	c.opSeq++
	id := c.opSeq
	c.ops[id] = cancel
	c.mu.Unlock()
	return opCtx, func() {
		c.mu.Lock()
		delete(c.ops, id)
		c.mu.Unlock()
		cancel()
	}
}

// cancelOps ends the operations of the connection that went down. c.mu is
// held.
func (c *Conn) cancelOps() {
	for id, cancel := range c.ops {
		cancel()
		delete(c.ops, id)
	}
}

// codeForReason maps the reason code of a PUBACK or PUBREC: 0x10 (no
// matching subscribers) and the transient failures are Unavailable, so that
// a retry may succeed.
func codeForReason(reason byte) Code {
	switch reason {
	case 0x87:
		return PermissionDenied
	case 0x97, 0x95: // 0x95 is no PUBACK reason in MQTT 5, but brokers send it
		return ResourceExhausted
	case 0x90, 0x99:
		return InvalidArgument
	}
	return Unavailable // 0x10, 0x80, 0x83, 0x91
}

// subackCode maps a refusal in a SUBACK or UNSUBACK. None is Unavailable:
// that code means "not connected yet, try later", and a Server that took a
// refusal for it would start deaf.
func subackCode(reason byte) Code {
	switch reason {
	case 0x87:
		return PermissionDenied
	case 0x8F:
		return InvalidArgument
	case 0x97:
		return ResourceExhausted
	case 0x9E, 0xA1, 0xA2: // the broker lacks a feature the filter needs
		return FailedPrecondition
	case 0x91:
		return Internal // a packet identifier paho should not have reused
	}
	return Unknown // 0x80 unspecified, 0x83 implementation specific, the rest
}

// subackText says a SUBACK or UNSUBACK refusal in words.
func subackText(reason byte) string {
	switch reason {
	case 0x9E:
		return "the broker does not support shared subscriptions (needed by share groups: WithShareGroup, ToAny)"
	case 0xA1:
		return "the broker does not support subscription identifiers"
	case 0xA2:
		return "the broker does not support wildcard subscriptions"
	}
	return reasonText(reason)
}

var reasonTexts = map[byte]string{
	0x10: "no matching subscribers",
	0x11: "no subscription existed",
	0x80: "unspecified error",
	0x83: "implementation specific error",
	0x87: "not authorized",
	0x8F: "topic filter invalid",
	0x90: "topic name invalid",
	0x91: "packet identifier in use",
	0x95: "packet too large",
	0x97: "quota exceeded",
	0x99: "payload format invalid",
	0x9E: "shared subscriptions not supported",
	0xA1: "subscription identifiers not supported",
	0xA2: "wildcard subscriptions not supported",
}

func reasonText(reason byte) string {
	if s, ok := reasonTexts[reason]; ok {
		return s
	}
	return fmt.Sprintf("reason 0x%02x", reason)
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// connConfig collects ConnOptions.
type connConfig struct {
	clientID         string
	username         string
	password         []byte
	credentialsSet   bool // WithCredentials was given: URL credentials are ignored
	tlsConfig        *tls.Config
	keepAlive        uint16
	connectTimeout   time.Duration
	dialTimeout      time.Duration
	sessionExpiry    uint32
	ackAfterHandling *bool
	writeCoalescing  *bool
	quickAck         *bool
	logger           *slog.Logger
	beforeUp         func() // tests: runs at the start of connectionUp
}
