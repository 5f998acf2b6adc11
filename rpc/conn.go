package rpc

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
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
	snapshotMu  sync.Mutex // retainedSnapshot runs one at a time (reflection.go)
	resumeMu    sync.Mutex
	resumables  map[resumable]struct{} // streams to resume after a reconnect (resume.go)
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
	// maxPacket is the broker's Maximum Packet Size from the current
	// connection's CONNACK, read without the lock by every publish; 0:
	// no limit.
	maxPacket atomic.Uint32
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

// packetLimit is the largest packet the broker takes on the current
// connection (its CONNACK's Maximum Packet Size), 0 for no limit. What is
// larger is sent in chunks (docs/protocol.md, "Chunking").
func (c *Conn) packetLimit() int { return int(c.maxPacket.Load()) }

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
	var maxPacket uint32
	if ack.Properties != nil {
		c.sharedSubs, c.wildcardSubs, c.subIDs = ack.Properties.SharedSubAvailable, ack.Properties.WildcardSubAvailable, ack.Properties.SubIDAvailable
		if ack.Properties.MaximumPacketSize != nil {
			maxPacket = *ack.Properties.MaximumPacketSize
		}
	}
	c.maxPacket.Store(maxPacket)
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
