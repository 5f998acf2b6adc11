package testbroker

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ErrClosed is returned by Restart and Disconnect after Close.
var ErrClosed = errors.New("testbroker: broker closed")

// rebindTimeout bounds how long Restart waits for its port to be free again.
const rebindTimeout = 5 * time.Second

// Broker is an embedded MQTT 5 broker listening on a loopback TCP port.
// Its methods are safe for concurrent use.
type Broker struct {
	addr      string // host:port actually bound; kept across restarts
	logger    *slog.Logger
	packetLog *slog.Logger // WithPacketLog; nil logs no packets
	// maxPacketSize is WithMaxPacketSize's; 0: no limit.
	maxPacketSize uint32
	faults        *faultTable
	wills         *willHolds

	mu      sync.Mutex // serialises Close, Restart and access to current
	current *instance  // nil once closed, or if a restart failed
	closed  bool
}

// New starts a broker listening on 127.0.0.1 on a free port (or on the
// address given with WithAddr) and serving until Close. Use it in examples and
// programs; tests should prefer Start.
func New(opts ...Option) (*Broker, error) {
	cfg := defaultConfig()
	for _, opt := range opts {
		opt.apply(&cfg)
	}
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return nil, fmt.Errorf("testbroker: listen: %w", err)
	}
	b := &Broker{addr: ln.Addr().String(), logger: cfg.logger, packetLog: cfg.packetLog, maxPacketSize: cfg.maxPacketSize, faults: new(faultTable), wills: new(willHolds)}
	b.current, err = startInstance(ln, b.faults, b.wills, b.logger, b.packetLog, b.maxPacketSize)
	if err != nil {
		return nil, err
	}
	b.logger.Info("testbroker listening", "url", b.URL())
	return b, nil
}

// Start starts a broker like New and closes it when the test ends. It stops
// the test with tb.Fatal if the broker cannot start.
func Start(tb testing.TB, opts ...Option) *Broker {
	tb.Helper()
	b, err := New(opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := b.Close(); err != nil {
			tb.Errorf("testbroker: close: %v", err)
		}
	})
	return b
}

// URL returns the broker's URL, "mqtt://127.0.0.1:PORT", as autopaho expects it.
func (b *Broker) URL() string { return "mqtt://" + b.addr }

// Addr returns the address the broker listens on, "127.0.0.1:PORT".
func (b *Broker) Addr() string { return b.addr }

// Close stops the broker: client connections are cut without a DISCONNECT
// packet, as if the broker crashed, and delayed messages still pending are
// lost. It returns once the listener and every client goroutine are gone.
// Calling it again does nothing.
func (b *Broker) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	return b.stopCurrent()
}

// Restart stops the broker as Close does, dropping every client connection
// and losing all sessions, subscriptions, retained and delayed messages, then
// starts a fresh broker on the same port. Fault rules are kept. Clients must
// reconnect; ConnectedClients tells when they have.
func (b *Broker) Restart() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	if err := b.stopCurrent(); err != nil {
		return err
	}
	ln, err := listenRetry(b.addr, rebindTimeout)
	if err != nil {
		return fmt.Errorf("testbroker: restart: %w", err)
	}
	b.current, err = startInstance(ln, b.faults, b.wills, b.logger, b.packetLog, b.maxPacketSize)
	if err != nil {
		return fmt.Errorf("testbroker: restart: %w", err)
	}
	b.logger.Info("testbroker restarted", "url", b.URL())
	return nil
}

// ConnectedClients returns the IDs of the clients connected right now, sorted.
func (b *Broker) ConnectedClients() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.current == nil {
		return nil
	}
	var ids []string
	for id, cl := range b.current.server.Clients.GetAll() {
		if !cl.Net.Inline && !cl.Closed() {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// Disconnect cuts the network connection of the client with this ID at once,
// without a DISCONNECT packet, as a network failure would: the broker
// publishes the client's will message, if any. It returns an error if no
// such client is connected.
func (b *Broker) Disconnect(clientID string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	if b.current == nil {
		return fmt.Errorf("testbroker: client %q is not connected: broker not running", clientID)
	}
	cl, ok := b.current.server.Clients.Get(clientID)
	if !ok || cl.Net.Inline || cl.Closed() || cl.Net.Conn == nil {
		return fmt.Errorf("testbroker: client %q is not connected", clientID)
	}
	if qc, ok := cl.Net.Conn.(*queuedConn); ok {
		qc.abort() // what is queued for the client is lost with the connection
		return nil
	}
	return cl.Net.Conn.Close()
}

// stopCurrent closes the running instance, if any. b.mu must be held.
func (b *Broker) stopCurrent() error {
	if b.current == nil {
		return nil
	}
	err := b.current.close()
	b.current = nil
	return err
}

// listenRetry listens on addr, retrying while the port is still in use.
func listenRetry(addr string, timeout time.Duration) (net.Listener, error) {
	deadline := time.Now().Add(timeout)
	for {
		ln, err := net.Listen("tcp", addr)
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return ln, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
