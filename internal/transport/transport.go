// Package transport is the net.Conn that mqttrpc puts between paho and a
// plain TCP connection to the broker. It does three things paho does not:
//
//   - it reads through a 32 KiB buffer, so that one read system call takes
//     in many packets (paho reads a packet's header byte by byte);
//   - it writes a whole MQTT packet in one system call even though paho hands
//     it over in pieces: paho's net.Buffers.WriteTo is a single writev only on
//     a bare *net.TCPConn, and on any wrapper becomes one write per piece.
//     With write coalescing, packets are appended to a buffer that a flusher
//     goroutine writes out, all that accumulated in one system call;
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
	// writers wait (backpressure).
	writeLimit = 256 << 10
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
	wake     sync.Cond // the flusher waits for packets
	space    sync.Cond // writers wait for the flusher to drain buf
	buf      []byte
	spare    []byte
	complete int
	err      error // the first write error, returned by every later write
	closed   bool
	done     chan struct{} // closed when the flusher has returned

	// waitingForSpace (tests) runs, under mu, whenever a writer starts
	// waiting for the flusher to drain buf; it must not block.
	waitingForSpace func()

	closeOnce sync.Once
	closeErr  error

	// Requests unanswered on this connection, counted from PUBLISH packets
	// written and read: a caller's requests go out and answers come in, a
	// server's the other way round, so the distance between the two counts
	// is the calls in flight either way.
	published atomic.Int64
	received  atomic.Int64
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
	c.reader = bufio.NewReaderSize(&reader{c: c}, readBuffer)
	if cfg.Coalesce {
		c.wake.L, c.space.L = &c.mu, &c.mu
		c.done = make(chan struct{})
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

// Unlock ends a packet: it is written (without coalescing), or queued for
// the flusher.
func (c *conn) Unlock() {
	c.inPacket = false
	if c.cfg.Coalesce {
		c.mu.Lock()
		if c.complete < len(c.buf) {
			c.complete = len(c.buf)
			c.wake.Signal()
		}
		c.mu.Unlock()
	} else if len(c.packet) > 0 {
		_, err := c.tcp.Write(c.packet)
		c.packet = c.packet[:0]
		if err != nil {
			c.fail(err)
		}
	}
	c.packetMu.Unlock()
}

// takeLocked takes the whole packets queued for one write. c.mu is held.
func (c *conn) takeLocked() []byte {
	out := c.buf[:c.complete]
	c.buf = append(c.spare[:0], c.buf[c.complete:]...)
	c.spare = nil
	c.complete = 0
	return out
}

// wroteLocked ends a write. c.mu is held.
func (c *conn) wroteLocked(out []byte, err error) {
	if cap(out) <= 2*writeLimit {
		c.spare = out[:0]
	}
	if err != nil && c.err == nil {
		c.err = err
		// paho learns of a dead connection from its reader.
		_ = c.tcp.Close()
	}
	c.space.Broadcast()
	c.wake.Signal() // packets queued meanwhile, or Close waiting
}

// Write takes one piece of a packet, or a whole packet when the writer did
// not Lock.
func (c *conn) Write(p []byte) (int, error) {
	if len(p) > 0 && (c.packetStart || !c.inPacket) {
		c.packetStart = false
		if c.cfg.QuickAck && p[0]>>4 == packetTypePublish {
			c.published.Add(1)
		}
	}
	if !c.cfg.Coalesce {
		return c.writeDirect(p)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// Wait while whole packets fill the buffer; a single packet larger than
	// the limit still goes in.
	for c.err == nil && !c.closed && c.complete > 0 && len(c.buf) >= writeLimit {
		if c.waitingForSpace != nil {
			c.waitingForSpace()
		}
		c.space.Wait()
	}
	switch {
	case c.err != nil:
		return 0, c.err
	case c.closed:
		return 0, net.ErrClosed
	}
	c.buf = append(c.buf, p...)
	if !c.inPacket {
		c.complete = len(c.buf)
		c.wake.Signal()
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

// flusher writes out the whole packets queued since its last write, all of
// them in one system call: a packet queued on an idle connection is written
// as soon as the flusher wakes, and those queued while it writes go out
// together in the next write.
func (c *conn) flusher() {
	defer close(c.done)
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for c.err == nil && c.complete == 0 && !c.closed {
			c.wake.Wait()
		}
		if c.err != nil || c.complete == 0 {
			return // failed, or closed with nothing left to write
		}
		out := c.takeLocked()
		c.mu.Unlock()
		_, err := c.tcp.Write(out)
		c.mu.Lock()
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
			c.space.Broadcast()
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

// MQTT control packet types.
const (
	packetTypePublish  = 3
	packetTypePuback   = 4
	packetTypePubrec   = 5
	packetTypePubcomp  = 7
	packetTypeSuback   = 9
	packetTypeUnsuback = 11
)

// reader reads from the TCP connection under the read buffer,
// counts the PUBLISH packets that arrive and re-arms TCP_QUICKACK.
type reader struct {
	c *conn
	// Packet boundaries in the byte stream: the bytes left of the packet
	// being read, or the header being parsed.
	skip       int // payload bytes left before the next packet header
	inHeader   bool
	headerType byte
	lenShift   uint
	length     int

	// Stall detection (see stallMin): armed once the broker was seen to
	// hold packets back; ackAt is when the last read that held an
	// acknowledgement returned, zero otherwise.
	armed  bool
	ackAt  time.Time
	stalls int
}

func (r *reader) Read(p []byte) (int, error) {
	n, err := r.c.tcp.Read(p)
	if n > 0 && r.c.cfg.QuickAck {
		// Only an acknowledgement from the broker needs an ACK at once:
		// the broker may have more to send behind it, and Nagle's
		// algorithm holds that back until the ACK. A PUBLISH we receive
		// is answered by our PUBACK or response soon, which carries the
		// ACK anyway.
		sawAck := r.scan(p[:n])
		if !r.armed {
			r.detectStall(sawAck, time.Now())
		}
		if r.armed && sawAck {
			if d := r.c.published.Load() - r.c.received.Load(); d <= quickAckMaxInFlight && d >= -quickAckMaxInFlight {
				r.c.rearmQuickAck()
			}
		}
	}
	return n, err
}

// detectStall arms the re-arming of TCP_QUICKACK once reads show the broker
// holding packets back behind our delayed ACK (see stallMin). now is when
// the read returned; sawAck whether it held an acknowledgement.
func (r *reader) detectStall(sawAck bool, now time.Time) {
	if !r.ackAt.IsZero() {
		if gap := now.Sub(r.ackAt); gap >= stallMin && gap <= stallMax {
			r.stalls++
			r.armed = r.stalls >= stallsToArm
		}
	}
	r.ackAt = time.Time{}
	if sawAck {
		r.ackAt = now
	}
}

// scan walks packet headers in b to count PUBLISH packets, skipping
// packet bodies without looking at them. It reports whether b holds the
// start of an acknowledgement (PUBACK, PUBREC, PUBCOMP, SUBACK, UNSUBACK).
func (r *reader) scan(b []byte) (sawAck bool) {
	for len(b) > 0 {
		if r.skip > 0 {
			k := min(r.skip, len(b))
			r.skip -= k
			b = b[k:]
			continue
		}
		if !r.inHeader {
			r.headerType = b[0] >> 4
			r.inHeader, r.lenShift, r.length = true, 0, 0
			switch r.headerType {
			case packetTypePuback, packetTypePubrec, packetTypePubcomp, packetTypeSuback, packetTypeUnsuback:
				sawAck = true
			}
			b = b[1:]
			continue
		}
		// Remaining length: a variable byte integer.
		x := b[0]
		b = b[1:]
		r.length |= int(x&0x7f) << r.lenShift
		r.lenShift += 7
		if x&0x80 != 0 && r.lenShift < 28 {
			continue
		}
		r.inHeader = false
		r.skip = r.length
		if r.headerType == packetTypePublish {
			r.c.received.Add(1)
		}
	}
	return sawAck
}

// rearmQuickAck turns TCP_QUICKACK on again: Linux turns it off by itself
// whenever it sees data go out right after data came in.
func (c *conn) rearmQuickAck() {
	_ = c.raw.Control(setQuickAck)
}
