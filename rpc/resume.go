package rpc

// Resumption of streams across reconnects (docs/protocol.md, "Resuming a
// stream"): each side keeps the numbered messages it sent until the peer
// acknowledges them (mqttrpc-ack on its credit messages), and after a
// reconnection asks the peer to resend what it missed (mqttrpc-resume) and
// resends what it may have lost itself. Receivers drop copies by sequence
// number, so the application sees each message once, in order.

import (
	"sync"

	"github.com/eclipse/paho.golang/paho"
)

const (
	// replayLimit bounds the messages a side keeps for resending: a peer
	// that acknowledges nothing (a foreign consumer without flow control)
	// cannot make it keep more. A Go peer acknowledges with its credit, so
	// at most about one and a half windows wait.
	replayLimit = 1024
	// replayBytes bounds their payloads.
	replayBytes = 16 << 20
)

// replay keeps the numbered messages of one direction of a stream that
// the peer has not acknowledged.
type replay struct {
	mu     sync.Mutex
	msgs   []*paho.Publish // messages base, base+1, …
	base   int64           // number of msgs[0]
	bytes  int
	forgot int64 // messages below this were dropped unacknowledged (over the limits)
}

// add keeps message seq, sent now.
func (r *replay) add(seq int64, p *paho.Publish) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.msgs) == 0 {
		r.base = seq
	}
	if seq != r.base+int64(len(r.msgs)) {
		return // not in order: never, the sender numbers them
	}
	r.msgs = append(r.msgs, p)
	r.bytes += len(p.Payload)
	for len(r.msgs) > 1 && (len(r.msgs) > replayLimit || r.bytes > replayBytes) {
		if r.msgs[0] != nil {
			r.bytes -= len(r.msgs[0].Payload)
		}
		r.msgs[0] = nil
		r.msgs = r.msgs[1:]
		r.base++
		r.forgot = r.base
	}
}

// skip records that message seq, sent now, is not kept (it went in
// chunks): a resend that needs it reports it missing.
func (r *replay) skip(seq int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.msgs) == 0 {
		r.base = seq
	}
	if seq != r.base+int64(len(r.msgs)) {
		return
	}
	r.msgs = append(r.msgs, nil)
}

// ack forgets the messages numbered below n: the peer has them.
func (r *replay) ack(n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.msgs) > 0 && r.base < n {
		if r.msgs[0] != nil {
			r.bytes -= len(r.msgs[0].Payload)
		}
		r.msgs[0] = nil
		r.msgs = r.msgs[1:]
		r.base++
	}
	if len(r.msgs) == 0 && n > r.base {
		r.base = n
	}
}

// from returns copies of the messages numbered n and above, ready to be
// published again with expiry as their MessageExpiryInterval, and whether
// some message at or above n is no longer kept.
func (r *replay) from(n int64, expiry uint32) (msgs []*paho.Publish, missing bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	missing = n < r.forgot
	for i, p := range r.msgs {
		if r.base+int64(i) < n {
			continue
		}
		if p == nil {
			missing = true // went in chunks: not kept
			continue
		}
		q := *p
		props := *p.Properties
		props.MessageExpiry = &expiry
		q.Properties = &props
		q.PacketID = 0
		msgs = append(msgs, &q)
	}
	return msgs, missing
}

// resumable is a stream that resumes after its Conn reconnected.
type resumable interface {
	// reconnected runs on autopaho's goroutine when a new connection is
	// up; it must not block.
	reconnected()
}

// addResumable registers a stream to be told of reconnections; the
// returned function removes it.
func (c *Conn) addResumable(r resumable) func() {
	c.resumeMu.Lock()
	if c.resumables == nil {
		c.resumables = map[resumable]struct{}{}
	}
	c.resumables[r] = struct{}{}
	c.resumeMu.Unlock()
	return func() {
		c.resumeMu.Lock()
		delete(c.resumables, r)
		c.resumeMu.Unlock()
	}
}

// resumeStreams tells the Conn's streams that a new connection is up.
func (c *Conn) resumeStreams() {
	c.resumeMu.Lock()
	list := make([]resumable, 0, len(c.resumables))
	for r := range c.resumables {
		list = append(list, r)
	}
	c.resumeMu.Unlock()
	for _, r := range list {
		r.reconnected()
	}
}
