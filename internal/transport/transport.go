// Package transport is the net.Conn that mqttrpc puts between paho and a
// plain TCP connection to the broker. It does three things paho does not:
//
//   - it reads through a 32 KiB buffer, so that one read system call takes
//     in many packets (paho reads a packet's header byte by byte);
//   - it writes a whole MQTT packet in one system call even though paho hands
//     it over in pieces: paho's net.Buffers.WriteTo is a single writev only on
//     a bare *net.TCPConn, and on any wrapper becomes one write per piece.
//     With write coalescing, a packet that finds the connection idle is
//     written at once by its writer, in a system call that never blocks
//     (what the socket does not take goes to the flusher); packets that
//     find a write under way are appended to a buffer that a flusher
//     goroutine writes out, all that accumulated in one system call. Each
//     connection decides from what it sees which of the two it does (see
//     modeWindow): a writer does not pay a goroutine wake-up for a packet
//     that goes out alone;
//   - once it has seen the broker hold a packet back behind our delayed ACK
//     (Nagle's algorithm on the broker, Mosquitto's stock configuration), it
//     re-arms TCP_QUICKACK after reading an acknowledgement from the broker
//     while few calls are in flight (Linux).
package transport

import (
	"bufio"
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// readBuffer is the size of the read buffer.
	readBuffer = 32 << 10
	// writeLimit bounds the bytes waiting for the flusher: past it
	// WaitWritable waits (backpressure). Write itself never waits, so that
	// a writer holding paho's locks never blocks on the broker.
	writeLimit = 256 << 10
	// modeWindow is the number of packets over which a connection decides
	// between writing a packet at once and leaving it to the flusher.
	// Writing at once saves the flusher's wake-up (a context switch and its
	// latency) when packets come one at a time; leaving them to the
	// flusher batches them into fewer system calls when they come together.
	// A connection that writes at once switches to batching when at least
	// half of a window's packets found a write under way; one that batches
	// switches back when its flusher wrote a window's packets at fewer than
	// modeBatchMin packets per system call on average.
	modeWindow = 32
	// modeBatchMin: see modeWindow, as a ratio (3/2).
	modeBatchNum, modeBatchDen = 3, 2
	// directMaxInFlight: past this many calls in flight (the distance
	// between PUBLISH packets written and read, as for TCP_QUICKACK), every
	// packet goes to the flusher whatever the window says. With more in
	// flight, packets rarely go out alone, and a writer that writes itself
	// is a reader or worker kept from its work for a system call: paho's
	// reader writes the PUBACKs, so it would stop reading while it writes,
	// where the flusher writes on the other core.
	directMaxInFlight = 2
	// closeFlush bounds how long Close waits for pending packets
	// (the DISCONNECT) to be written.
	closeFlush = 2 * time.Second
	// quickAckMaxInFlight: TCP_QUICKACK is re-armed after a read only while
	// at most this many requests are unanswered on the connection. On a
	// broker with Nagle's algorithm on, 16 calls in flight still stall
	// without it (p99 48 ms, a quarter of the calls/s); beyond a few dozen,
	// traffic flows both ways and ACKs ride on it, and the extra system call
	// and ACK packet per read would only cost throughput (4-9% at 64).
	quickAckMaxInFlight = 16

	// A stall behind Nagle's algorithm on the broker ends when our delayed
	// ACK goes out, 40 ms (Linux's minimum delayed-ACK timeout) after the
	// acknowledgement we read: the packet the broker held back arrives then.
	// A read that follows a read holding an acknowledgement after a gap in
	// [stallMin, stallMax] looks like one; after stallsToArm of them the
	// connection re-arms TCP_QUICKACK from then on. Until then it does not:
	// on a broker with TCP_NODELAY the re-arm only costs a system call and
	// an ACK segment per acknowledgement (15-20 % CPU per call at 16 calls
	// in flight on the embedded broker). An idle connection whose next
	// packet happens to come 38-60 ms after an acknowledgement counts too;
	// such a connection is quiet enough that the re-arm costs nothing, and
	// so is one whose calls take 40-60 ms each. Once armed, a connection
	// stays armed.
	stallMin    = 38 * time.Millisecond
	stallMax    = 60 * time.Millisecond
	stallsToArm = 3
)

// Config says which parts of the transport are on.
type Config struct {
	Coalesce bool // write coalescing with a flusher goroutine
	QuickAck bool // adaptive TCP_QUICKACK (Linux only; ignored elsewhere, see QuickAckSupported)
	// QuickAckFromStart re-arms TCP_QUICKACK from the first
	// acknowledgement read, without waiting for stallsToArm stalls: for
	// connections too short-lived to see them (a command-line call).
	QuickAckFromStart bool
}

// Dial dials address over TCP, giving up after timeout (none if 0), and
// returns the connection wrapped as cfg says. The returned net.Conn also
// implements sync.Locker: paho holds the lock across the pieces of one
// packet, which is how the transport knows where a packet ends.
func Dial(ctx context.Context, address string, timeout time.Duration, cfg Config) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", address)
	if err != nil {
		return nil, err
	}
	tcp, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	return newConn(tcp, cfg), nil
}

// conn is the connection paho sees. It implements sync.Locker, so
// that paho holds the lock across the pieces of one packet.
type conn struct {
	tcp    *net.TCPConn
	raw    syscall.RawConn // nil without quickAck
	reader *bufio.Reader
	cfg    Config

	// packetMu is paho's lock: held from the first piece of a packet to
	// the last, so that packets never interleave.
	packetMu    sync.Mutex
	inPacket    bool   // guarded by packetMu
	packetStart bool   // the next Write starts a packet; guarded by packetMu
	packet      []byte // without coalescing: the packet being assembled

	// Write coalescing. buf[:complete] holds whole packets for the
	// flusher; buf[complete:] the start of the packet being written.
	mu       sync.Mutex
	wake     sync.Cond // the flusher waits for packets, or for a write to end
	buf      []byte
	spare    []byte
	complete int
	writing  bool          // a write system call is under way (the flusher's or a writer's)
	space    chan struct{} // closed when buf drains below writeLimit; nil while nobody waits
	err      error         // the first write error, returned by every later write
	closed   bool
	done     chan struct{}      // closed when the flusher has returned
	direct   *nonBlockingWriter // for writes that must not block; nil: every packet goes to the flusher

	// The write mode (see modeWindow), guarded by mu: batching leaves every
	// packet to the flusher. Counted over the current window: packets
	// completed, those that found a write under way, and the flusher's
	// system calls.
	batching      bool
	windowPackets int
	windowBehind  int
	windowWrites  int
	// Totals, for tests: packets written at once by their writer, the
	// flusher's system calls, and the times it was woken.
	directWrites, flusherWrites, flusherWakeups int

	// beforeDirectWrite (tests) runs before a writer's own write system
	// call, outside every lock.
	beforeDirectWrite func()

	closeOnce sync.Once
	closeErr  error

	// Requests unanswered on this connection, counted from PUBLISH packets
	// written and read: a caller's requests go out and answers come in, a
	// server's the other way round, so the distance between the two counts
	// is the calls in flight either way.
	published atomic.Int64
	received  atomic.Int64
	rearms    atomic.Int64 // TCP_QUICKACK re-arms, for tests
}

func newConn(tcp *net.TCPConn, cfg Config) *conn {
	if !QuickAckSupported {
		cfg.QuickAck = false
	}
	c := &conn{tcp: tcp, cfg: cfg}
	if cfg.QuickAck {
		if raw, err := tcp.SyscallConn(); err == nil {
			c.raw = raw
		} else {
			c.cfg.QuickAck = false
		}
	}
	c.reader = bufio.NewReaderSize(&reader{c: c, armed: c.cfg.QuickAck && cfg.QuickAckFromStart}, readBuffer)
	if cfg.Coalesce {
		c.wake.L = &c.mu
		c.done = make(chan struct{})
		if directWriteSupported {
			if raw, err := tcp.SyscallConn(); err == nil {
				c.direct = newNonBlockingWriter(raw)
			}
		}
		c.batching = c.direct == nil
		go c.flusher()
	}
	return c
}

// Read reads from the read buffer.
func (c *conn) Read(p []byte) (int, error) { return c.reader.Read(p) }

// Lock starts a packet: paho calls it before writing the packet's pieces.
func (c *conn) Lock() {
	c.packetMu.Lock()
	c.inPacket, c.packetStart = true, true
}

// Unlock ends a packet: it is written (without coalescing), written at
// once by this writer without blocking, or queued for the flusher.
func (c *conn) Unlock() {
	c.inPacket = false
	if !c.cfg.Coalesce {
		if len(c.packet) > 0 {
			_, err := c.tcp.Write(c.packet)
			c.packet = c.packet[:0]
			if err != nil {
				c.fail(err)
			}
		}
		c.packetMu.Unlock()
		return
	}
	c.mu.Lock()
	var out []byte
	if c.complete < len(c.buf) {
		c.complete = len(c.buf)
		out = c.packetDoneLocked()
	}
	c.mu.Unlock()
	c.packetMu.Unlock()
	if out != nil {
		c.writeNow(out)
	}
}

// packetDoneLocked counts a packet completed in buf and decides who writes
// it. It returns the bytes that the caller is to write at once, having
// marked a write under way, or nil when the packet is left to the flusher
// (woken if it can write). c.mu is held.
func (c *conn) packetDoneLocked() []byte {
	c.windowPackets++
	if c.writing {
		c.windowBehind++
	}
	if c.windowPackets >= modeWindow {
		c.decideLocked()
	}
	switch {
	case c.writing || c.err != nil:
		// The write under way is followed by the flusher's.
		return nil
	case c.batching || c.closed || c.inFlight() > directMaxInFlight:
		c.wake.Signal()
		return nil
	}
	c.writing = true
	c.directWrites++
	return c.takeLocked()
}

// countsCalls is whether the connection counts the PUBLISH packets it
// writes and reads: for TCP_QUICKACK, and for the write mode.
func (c *conn) countsCalls() bool { return c.cfg.QuickAck || c.direct != nil }

// inFlight is the distance between the PUBLISH packets written and read:
// the calls in flight on a connection that only calls or only serves.
func (c *conn) inFlight() int64 {
	d := c.published.Load() - c.received.Load()
	return max(d, -d)
}

// decideLocked ends a window: see modeWindow. c.mu is held.
func (c *conn) decideLocked() {
	if c.direct != nil {
		if c.batching {
			c.batching = c.windowPackets*modeBatchDen >= c.windowWrites*modeBatchNum
		} else {
			c.batching = 2*c.windowBehind >= c.windowPackets
		}
	}
	c.windowPackets, c.windowBehind, c.windowWrites = 0, 0, 0
}

// writeNow writes out, taken from buf with a write marked under way, in a
// system call that does not block; what the socket does not take goes back
// to the front of buf for the flusher.
func (c *conn) writeNow(out []byte) {
	if c.beforeDirectWrite != nil {
		c.beforeDirectWrite()
	}
	n, err := c.direct.writeNow(out)
	c.mu.Lock()
	if err == nil && n < len(out) {
		rest := out[n:]
		c.buf = append(append(make([]byte, 0, len(rest)+len(c.buf)), rest...), c.buf...)
		c.complete += len(rest)
	}
	c.writing = false
	c.wroteLocked(out, err)
	c.mu.Unlock()
}

// takeLocked takes the whole packets queued for one write. c.mu is held.
func (c *conn) takeLocked() []byte {
	out := c.buf[:c.complete]
	c.buf = append(c.spare[:0], c.buf[c.complete:]...)
	c.spare = nil
	c.complete = 0
	return out
}

// wroteLocked ends a write (writing is false again). c.mu is held.
func (c *conn) wroteLocked(out []byte, err error) {
	if out != nil && cap(out) <= 2*writeLimit && c.spare == nil {
		c.spare = out[:0]
	}
	if err != nil && c.err == nil {
		c.err = err
		// paho learns of a dead connection from its reader.
		_ = c.tcp.Close()
	}
	if c.space != nil && (len(c.buf) < writeLimit || c.err != nil || c.closed) {
		close(c.space)
		c.space = nil
	}
	// The flusher has work only when packets were queued meanwhile, or
	// Close (or a failure) waits for it to return: a write that went out
	// alone must not cost it a wake-up (one per packet, four per call).
	if c.complete > 0 || c.closed || c.err != nil {
		c.wake.Signal()
	}
}

// WaitWritable waits until nc takes a packet without blocking its writer,
// or ctx ends. It reports false, at once, when nc cannot promise that: a
// connection that Dial did not return, or one without write coalescing,
// may block a writer for as long as the peer does not read. A connection
// of this package with coalescing never blocks Write; it buffers, and
// WaitWritable is its backpressure: it waits while writeLimit bytes wait
// for the flusher. A failed or closed connection is writable (its writes
// fail at once).
func WaitWritable(ctx context.Context, nc net.Conn) (bool, error) {
	c, ok := nc.(*conn)
	if !ok || !c.cfg.Coalesce {
		return false, nil
	}
	c.mu.Lock()
	for len(c.buf) >= writeLimit && c.err == nil && !c.closed {
		if c.space == nil {
			c.space = make(chan struct{})
		}
		space := c.space
		c.mu.Unlock()
		select {
		case <-space:
		case <-ctx.Done():
			return true, ctx.Err()
		}
		c.mu.Lock()
	}
	c.mu.Unlock()
	return true, nil
}

// Write takes one piece of a packet, or a whole packet when the writer did
// not Lock.
func (c *conn) Write(p []byte) (int, error) {
	if len(p) > 0 && (c.packetStart || !c.inPacket) {
		c.packetStart = false
		if c.countsCalls() && p[0]>>4 == packetTypePublish {
			c.published.Add(1)
		}
	}
	if !c.cfg.Coalesce {
		return c.writeDirect(p)
	}
	c.mu.Lock()
	switch {
	case c.err != nil:
		err := c.err
		c.mu.Unlock()
		return 0, err
	case c.closed:
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	c.buf = append(c.buf, p...)
	var out []byte
	if !c.inPacket {
		c.complete = len(c.buf)
		out = c.packetDoneLocked()
	}
	c.mu.Unlock()
	if out != nil {
		c.writeNow(out)
	}
	return len(p), nil
}

// writeDirect assembles a locked packet, written whole at Unlock, or
// writes an unlocked one at once.
func (c *conn) writeDirect(p []byte) (int, error) {
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if !c.inPacket {
		n, err := c.tcp.Write(p)
		if err != nil {
			c.fail(err)
		}
		return n, err
	}
	c.packet = append(c.packet, p...)
	return len(p), nil
}

// flusher writes out the whole packets queued since the last write, all of
// them in one system call: those queued behind a writer's own write, and
// every packet while the connection batches (see modeWindow).
func (c *conn) flusher() {
	defer close(c.done)
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for c.err == nil && (c.writing || c.complete == 0 && !c.closed) {
			c.wake.Wait()
			c.flusherWakeups++
		}
		if c.err != nil || c.complete == 0 {
			return // failed, or closed with nothing left to write
		}
		out := c.takeLocked()
		c.writing = true
		c.windowWrites++
		c.flusherWrites++
		c.mu.Unlock()
		_, err := c.tcp.Write(out)
		c.mu.Lock()
		c.writing = false
		c.wroteLocked(out, err)
	}
}

// fail records a write error that paho could not be told of (it was handed
// the packet already) and closes the connection, so that paho's reader
// fails and the connection is re-established.
func (c *conn) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	_ = c.tcp.Close()
}

// Close writes out pending packets (bounded by closeFlush), stops
// the flusher and closes the connection.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		if c.cfg.Coalesce {
			_ = c.tcp.SetWriteDeadline(time.Now().Add(closeFlush))
			c.mu.Lock()
			c.closed = true
			c.wake.Broadcast()
			if c.space != nil {
				close(c.space)
				c.space = nil
			}
			c.mu.Unlock()
			<-c.done
		}
		c.closeErr = c.tcp.Close()
		if errors.Is(c.closeErr, net.ErrClosed) {
			c.closeErr = nil // closed by the flusher after a write error
		}
	})
	return c.closeErr
}

func (c *conn) LocalAddr() net.Addr                { return c.tcp.LocalAddr() }
func (c *conn) RemoteAddr() net.Addr               { return c.tcp.RemoteAddr() }
func (c *conn) SetDeadline(t time.Time) error      { return c.tcp.SetDeadline(t) }
func (c *conn) SetReadDeadline(t time.Time) error  { return c.tcp.SetReadDeadline(t) }
func (c *conn) SetWriteDeadline(t time.Time) error { return c.tcp.SetWriteDeadline(t) }
