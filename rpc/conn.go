package rpc

import (
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
)

// Conn is a connection to an MQTT 5 broker that Clients and Servers share.
// It reconnects by itself (autopaho), restores their subscriptions after a
// reconnect and hands each received PUBLISH to the Client or Server it
// belongs to. One Conn may carry any number of Clients and Servers along with
// the application's own traffic (Manager).
type Conn struct {
	cm       *autopaho.ConnectionManager
	clientID string
	owned    bool // Close disconnects cm
	// manualAck: requests are acknowledged to the broker after they were
	// handled, so that a persistent session redelivers them if the server
	// dies meanwhile.
	manualAck bool
	logger    *slog.Logger

	// listeners is a copy-on-write list read on paho's receive goroutine
	// without locking.
	listeners   atomic.Pointer[[]*listener]
	listenersMu sync.Mutex
	// parked holds QoS 1/2 packets nobody claimed yet, on a Conn made by
	// Dial: a persistent session's redelivered requests arrive right after
	// CONNACK, before the application has started its Server. They are
	// replayed to each new listener and acknowledged when they expire.
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

	session *sessionGuard // ends publishes that paho's session state forgets

	responses responseRouter // the response topic shared by the Conn's Clients

	ctx    context.Context // lives until Close; bounds background subscribes
	cancel context.CancelFunc
	wg     sync.WaitGroup // background subscribes
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

// Dial connects to the broker at brokerURL and waits until the connection is
// up or ctx ends. Schemes: mqtt:// and tcp:// (plain TCP, port 1883 by
// default), mqtts://, tls:// and ssl:// (TLS, see WithTLSConfig), ws:// and
// wss:// (WebSocket). The connection is re-established after every loss until
// Close.
func Dial(ctx context.Context, brokerURL string, opts ...ConnOption) (*Conn, error) {
	cfg := connConfig{
		keepAlive:      30,
		connectTimeout: 10 * time.Second,
		logger:         discardLogger(),
	}
	for _, o := range opts {
		o.applyToConn(&cfg)
	}
	u, err := url.Parse(brokerURL)
	if err != nil {
		return nil, Errorf(InvalidArgument, "broker URL %q: %w", brokerURL, err)
	}
	switch u.Scheme {
	case "mqtt", "tcp", "mqtts", "tls", "ssl", "ws", "wss":
	default:
		return nil, Errorf(InvalidArgument, "broker URL %q: scheme must be mqtt, mqtts, tcp, tls, ssl, ws or wss", brokerURL)
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
	c, err := newConn(apCfg, cfg.logger, true)
	if err != nil {
		return nil, err
	}
	if err := c.AwaitConnection(ctx); err != nil {
		_ = c.Close(context.Background())
		return nil, err
	}
	return c, nil
}

// NewConnection starts an autopaho connection manager from the
// application's own configuration and returns the Conn over it. The
// application keeps full use of the manager (Manager): its own
// OnPublishReceived handlers, OnConnectionUp and OnConnectionDown still run
// (after mqttrpc's). cfg.ClientID must be set: it names the client's
// response topic. Unlike Dial, NewConnection does not wait for the
// connection; see AwaitConnection.
//
// mqttrpc cannot attach to a manager that was started elsewhere, because
// autopaho forgets handlers added with AddOnPublishReceived at the next
// reconnect.
func NewConnection(_ context.Context, cfg autopaho.ClientConfig, opts ...ConnOption) (*Conn, error) {
	cc := connConfig{logger: discardLogger()}
	for _, o := range opts {
		o.applyToConn(&cc)
	}
	if err := checkID("client ID", cfg.ClientID); err != nil {
		return nil, err
	}
	return newConn(cfg, cc.logger, false)
}

// newConn starts the connection manager. Its lifetime is the Conn's, not
// that of any caller's context: autopaho stops for good when the context
// given to NewConnection ends.
func newConn(cfg autopaho.ClientConfig, logger *slog.Logger, owned bool) (*Conn, error) {
	c := &Conn{
		clientID:  cfg.ClientID,
		owned:     owned,
		manualAck: cfg.EnableManualAcknowledgment,
		logger:    logger,
		subs:      map[string]paho.SubscribeOptions{},
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.listeners.Store(&[]*listener{})

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
		c.mu.Lock()
		c.lastError = err
		c.mu.Unlock()
		c.logger.Debug("mqttrpc: connect attempt failed", "error", err)
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

// ClientID returns the MQTT client identifier of the connection.
func (c *Conn) ClientID() string { return c.clientID }

// Manager returns the underlying autopaho connection manager, for the
// application's own publishes and subscriptions.
func (c *Conn) Manager() *autopaho.ConnectionManager { return c.cm }

// AwaitConnection waits until the connection is up and every subscription
// made through it is in place, or ctx ends (Unavailable, with the last
// connection error).
func (c *Conn) AwaitConnection(ctx context.Context) error {
	for {
		c.mu.Lock()
		closed, up, ready, lastErr := c.closed, c.up, c.readyCh, c.lastError
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
		waitCtx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		err := c.cm.AwaitConnection(waitCtx)
		cancel()
		if ctx.Err() != nil {
			if lastErr != nil {
				return Errorf(Unavailable, "not connected to the broker: %v", lastErr)
			}
			return Errorf(Unavailable, "not connected to the broker: %w", ctx.Err())
		}
		if err != nil && waitCtx.Err() == nil {
			return Errorf(Unavailable, "not connected to the broker: %w", err)
		}
	}
}

var errConnClosed = Errorf(Unavailable, "connection closed")

// Close disconnects from the broker if the Conn made the connection (Dial);
// with NewConnection the application disconnects its manager itself. Close
// the Clients and shut down the Servers first.
func (c *Conn) Close(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	if c.genCancel != nil {
		c.genCancel()
		c.cancelOps()
	}
	c.mu.Unlock()
	c.cancel()
	c.listenersMu.Lock()
	if c.parkTimer != nil {
		c.parkTimer.Stop()
		c.parkTimer = nil
	}
	c.parked = nil // the broker redelivers what the session keeps
	c.listenersMu.Unlock()
	var err error
	if c.owned {
		err = c.cm.Disconnect(ctx)
		if err == nil {
			c.session.close()
		} else {
			// Disconnect gave up with ctx; the manager stops on its own
			// (c.ctx is cancelled) and must have stopped first.
			go func() {
				<-c.cm.Done()
				c.session.close()
			}()
		}
	}
	c.wg.Wait()
	return err
}

// connectionUp runs on autopaho's goroutine and must not block: it restores
// the subscriptions in the background.
func (c *Conn) connectionUp(cm *autopaho.ConnectionManager, ack *paho.Connack) {
	c.mu.Lock()
	c.gen++
	gen := c.gen
	c.up = true
	if c.genCancel != nil {
		c.genCancel()
		c.cancelOps()
	}
	c.genCtx, c.genCancel = context.WithCancel(c.ctx)
	ready := make(chan struct{})
	c.readyCh = ready
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

func (c *Conn) connectionDown() {
	c.mu.Lock()
	c.up = false
	if c.genCancel != nil {
		c.genCancel()
		c.cancelOps()
	}
	c.genCtx, c.genCancel = nil, nil
	c.mu.Unlock()
	c.logger.Debug("mqttrpc: connection lost", "client_id", c.clientID)
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
// recorded and are subscribed at the next connection).
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
	opCtx, done := c.operationContext(ctx)
	if opCtx == nil {
		return errNotConnected
	}
	suback, err := cm.Subscribe(opCtx, &paho.Subscribe{Subscriptions: subs})
	done()
	if suback == nil {
		switch {
		case errors.Is(err, paho.ErrInvalidArguments):
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
	for i, reason := range suback.Reasons {
		if reason >= 0x80 && i < len(subs) {
			return Errorf(codeForReason(reason), "broker refused subscription to %q: %s", subs[i].Topic, reasonText(reason))
		}
	}
	return nil
}

// unsubscribe forgets filters and unsubscribes them if connected.
func (c *Conn) unsubscribe(ctx context.Context, filters []string) error {
	c.mu.Lock()
	for _, f := range filters {
		delete(c.subs, f)
	}
	up := c.up
	c.mu.Unlock()
	if !up || len(filters) == 0 {
		return nil
	}
	if _, err := c.cm.Unsubscribe(ctx, &paho.Unsubscribe{Topics: filters}); err != nil {
		return Errorf(Unavailable, "unsubscribe: %w", err)
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
// them).
func (c *Conn) park(p *paho.Publish, ack func()) {
	now := time.Now()
	c.listenersMu.Lock()
	defer c.listenersMu.Unlock()
	// A listener added since the route began may want it.
	for _, l := range *c.listeners.Load() {
		if l.handle(p, ack) {
			return
		}
	}
	keep := c.parked[:0]
	for i, pp := range c.parked {
		if now.After(pp.expires) || len(c.parked)-i >= parkLimit {
			pp.ack()
			continue
		}
		keep = append(keep, pp)
	}
	c.parked = append(keep, parkedPublish{p: p, ack: ack, expires: now.Add(parkTime)})
	c.scheduleReleaseLocked()
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
	defer c.listenersMu.Unlock()
	c.parkTimer = nil
	now := time.Now()
	keep := c.parked[:0]
	for _, pp := range c.parked {
		if now.Before(pp.expires) {
			keep = append(keep, pp)
			continue
		}
		pp.ack()
	}
	clear(c.parked[len(keep):])
	c.parked = keep
	c.scheduleReleaseLocked()
}

// ackFunc returns the function that acknowledges a received PUBLISH, once,
// and only on the connection it arrived on: paho warns that an ack after a
// reconnect may acknowledge an unrelated packet of the new connection.
func (c *Conn) ackFunc(pr paho.PublishReceived) func() {
	c.mu.Lock()
	gen := c.gen
	c.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			current := c.gen == gen && c.up
			c.mu.Unlock()
			if current {
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

// isUp reports whether the connection is up.
func (c *Conn) isUp() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.up && !c.closed
}

// codeForReason maps an MQTT 5 reason code of a PUBACK, PUBREC or SUBACK.
func codeForReason(reason byte) Code {
	switch reason {
	case 0x10:
		return Unavailable
	case 0x87:
		return PermissionDenied
	case 0x97, 0x95, 0x9E, 0x96:
		return ResourceExhausted
	case 0x8F, 0x90, 0x99, 0x9A, 0xA1:
		return InvalidArgument
	case 0x8B, 0x8C:
		return Unavailable
	}
	return Unavailable
}

var reasonTexts = map[byte]string{
	0x10: "no matching subscribers",
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
	tlsConfig        *tls.Config
	keepAlive        uint16
	connectTimeout   time.Duration
	sessionExpiry    uint32
	ackAfterHandling *bool
	writeCoalescing  *bool
	quickAck         *bool
	logger           *slog.Logger
}
