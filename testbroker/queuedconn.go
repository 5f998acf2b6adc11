package testbroker

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

const (
	// writeQueueLimit bounds the bytes queued for one client that does not
	// read them: past it the broker cuts the connection, as a broker
	// protecting its memory from a consumer that stopped reading would.
	// 1,000 answers of 314,159 bytes in flight to one caller are 300 MiB.
	writeQueueLimit = 1 << 30
	// closeFlush bounds how long closing a connection waits for the packets
	// queued before it (a DISCONNECT) to be written.
	closeFlush = 2 * time.Second
	// chunkSize is the size of the buffers small packets are copied into;
	// a larger packet gets a buffer of its own. The writer hands all of
	// them to one writev.
	chunkSize = 32 << 10
	// maxFree is how many written chunks a connection keeps for reuse.
	maxFree = 4
)

// errWriteQueueFull cuts a client that let writeQueueLimit bytes pile up.
var errWriteQueueFull = fmt.Errorf("testbroker: client does not read: more than %d bytes queued for it", writeQueueLimit)

// queuedConn is the connection mochi sees for each client: a write queues
// the bytes and returns at once, and a goroutine of the connection writes
// them out in order.
//
// mochi v2.7.9 writes every packet to the network while holding the
// client's lock (Client.WritePacket, clients.go:602-629), and its reader of
// a connection takes that lock to write the acknowledgement of each PUBLISH
// it reads (Server.processPublish, server.go:952) and the lock of every
// subscriber to give a message its packet ID (Client.NextPacketID,
// clients.go:277, from publishToClient). So once the writer to a client
// blocks because that client does not read for a moment, the broker stops
// reading the client and every publisher whose messages go to it. A client
// that reads again only after its own writes are through (paho holds its
// session lock across writing a PUBACK, and its reader needs that lock for
// every acknowledgement it reads) then waits for the broker forever: with
// large payloads at high concurrency both sides fill their TCP buffers and
// the connections wedge until the keepalive cuts them. Mosquitto never
// blocks on a client: it reads whenever a socket is readable and queues
// what it cannot write yet. With queuedConn, mochi's lock is held for a
// copy only, and the broker keeps reading every client whatever the others
// do.
type queuedConn struct {
	net.Conn

	mu      sync.Mutex
	wake    sync.Cond   // the writer waits for bytes, or for closing
	queue   net.Buffers // bytes written by mochi, not yet on the network
	queued  int         // bytes in queue
	free    [][]byte    // chunks written out, for reuse (at most maxFree)
	spare   net.Buffers // the writer's last batch, emptied, for reuse
	sent    [][]byte    // the buffers of the batch being written; the writer's alone
	out     net.Buffers // what is left of the batch being written; the writer's alone
	err     error       // the first write failure; every later write returns it
	closing bool
	done    chan struct{} // closed when the writer has returned

	closeOnce sync.Once
	closeErr  error
}

// newQueuedConn wraps conn and starts its writer, which returns once the
// connection is closed (Close or abort) or a write failed.
func newQueuedConn(conn net.Conn) *queuedConn {
	c := &queuedConn{Conn: conn, done: make(chan struct{})}
	c.wake.L = &c.mu
	go c.writer()
	return c
}

// Write queues p and returns at once.
func (c *queuedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.err != nil:
		return 0, c.err
	case c.closing:
		return 0, net.ErrClosed
	case c.queued+len(p) > writeQueueLimit:
		c.failLocked(errWriteQueueFull)
		return 0, c.err
	case len(p) == 0:
		return 0, nil
	}
	// Copy p once: into the last chunk if it fits, else into a fresh
	// chunk, or a buffer of its own if it is larger than a chunk.
	if n := len(c.queue); n > 0 && len(c.queue[n-1])+len(p) <= cap(c.queue[n-1]) {
		c.queue[n-1] = append(c.queue[n-1], p...)
	} else {
		var buf []byte
		switch {
		case len(p) > chunkSize:
			buf = make([]byte, 0, len(p))
		case len(c.free) > 0:
			buf = c.free[len(c.free)-1]
			c.free = c.free[:len(c.free)-1]
		default:
			buf = make([]byte, 0, chunkSize)
		}
		c.queue = append(c.queue, append(buf, p...))
	}
	c.queued += len(p)
	c.wake.Signal()
	return len(p), nil
}

// writer writes out what is queued, all of it in one system call, until the
// connection closes and the queue is empty, or a write fails.
func (c *queuedConn) writer() {
	defer close(c.done)
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for c.err == nil && c.queued == 0 && !c.closing {
			c.wake.Wait()
		}
		if c.err != nil || c.queued == 0 {
			return // failed or aborted, or closed with nothing left to write
		}
		batch := c.queue
		c.queue, c.queued, c.spare = c.spare[:0], 0, nil
		c.sent = append(c.sent[:0], batch...) // WriteTo forgets the buffers it wrote
		c.mu.Unlock()
		c.out = batch
		_, err := c.out.WriteTo(c.Conn) // writev on a *net.TCPConn
		c.mu.Lock()
		for _, b := range c.sent {
			if cap(b) == chunkSize && len(c.free) < maxFree {
				c.free = append(c.free, b[:0])
			}
		}
		clear(c.sent)
		clear(batch)
		c.spare = batch[:0]
		if err != nil {
			c.failLocked(err)
		}
	}
}

// failLocked records the first failure, drops what is queued and closes the
// network connection, so that mochi's reader fails too. c.mu is held.
func (c *queuedConn) failLocked(err error) {
	if c.err == nil {
		c.err = err
	}
	c.queue, c.queued = nil, 0
	c.wake.Signal()
	_ = c.Conn.Close()
}

// Close is mochi's close: what was queued before it, such as a DISCONNECT,
// is written first (for at most closeFlush), then the connection is closed.
// It returns once the writer has.
func (c *queuedConn) Close() error {
	c.closeOnce.Do(func() {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(closeFlush))
		c.mu.Lock()
		c.closing = true
		c.wake.Signal()
		c.mu.Unlock()
		<-c.done
		c.closeErr = c.Conn.Close()
		if errors.Is(c.closeErr, net.ErrClosed) {
			c.closeErr = nil // closed after a failed write
		}
	})
	return c.closeErr
}

// abort cuts the connection at once, dropping what is queued, as a network
// failure or a crashing broker would. It returns once the writer has.
func (c *queuedConn) abort() {
	c.mu.Lock()
	c.closing = true
	c.failLocked(net.ErrClosed)
	c.mu.Unlock()
	<-c.done
}
