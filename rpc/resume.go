package rpc

// Resumption of streams across reconnects (docs/protocol.md, "Resuming a
// stream"): each side keeps the numbered messages it sent until the peer
// acknowledges them (mqttrpc-ack on its credit messages), and after a
// reconnection asks the peer to resend what it missed (mqttrpc-resume) and
// resends what it may have lost itself. Receivers drop copies by sequence
// number, so the application sees each message once, in order.

import (
	"context"
	"log/slog"
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
// the peer has not acknowledged. A message that went in chunks is kept
// whole, and split again when it is sent again (by the limit then).
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
		r.bytes -= len(r.msgs[0].Payload)
		r.msgs[0] = nil
		r.msgs = r.msgs[1:]
		r.base++
		r.forgot = r.base
	}
}

// ack forgets the messages numbered below n: the peer has them.
func (r *replay) ack(n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.msgs) > 0 && r.base < n {
		r.bytes -= len(r.msgs[0].Payload)
		r.msgs[0] = nil
		r.msgs = r.msgs[1:]
		r.base++
	}
	if len(r.msgs) == 0 && n > r.base {
		r.base = n
	}
}

// payloadBytes returns the payload bytes kept.
func (r *replay) payloadBytes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bytes
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

// The streams' side of it.

// spawnUnlessEnded runs f on a goroutine counted in wg, unless *ended
// (read under mu) says the stream has ended: the stream's end waits for
// wg, after setting *ended.
func spawnUnlessEnded(mu *sync.Mutex, ended *bool, wg *sync.WaitGroup, f func()) {
	mu.Lock()
	if *ended {
		mu.Unlock()
		return
	}
	wg.Add(1)
	mu.Unlock()
	go func() {
		defer wg.Done()
		f()
	}()
}

// resender is what resendFrom needs of a side's connection.
type resender struct {
	publish func(context.Context, *paho.Publish) error
	limit   func() int // the broker's Maximum Packet Size now; 0: none
	logger  *slog.Logger
}

// resendFrom publishes first (a resume or credit message; nil for none),
// then the messages of out numbered from and above, again: each whole if
// it fits the broker's limit now, else in chunks split at that limit
// (docs/protocol.md, "Resuming a stream"). It reports whether one of
// those is no longer kept, and then sends none of them: the receiver
// could not deliver what follows a gap. A failed publish stops it; the
// next resume asks again.
func resendFrom(ctx context.Context, rs resender, out *replay, first *paho.Publish, from int64, expiry uint32) (missing bool) {
	if first != nil {
		if err := rs.publish(ctx, first); err != nil {
			rs.logger.Debug("mqttrpc: resuming a stream failed", "topic", first.Topic, "error", err)
			return false
		}
	}
	msgs, missing := out.from(from, expiry)
	if missing {
		return true
	}
	for _, p := range msgs {
		if err := resendOne(ctx, rs, p); err != nil {
			rs.logger.Debug("mqttrpc: resending a stream message failed", "topic", p.Topic, "error", err)
			return false
		}
	}
	return false
}

// resendOne publishes one kept message again, in chunks if it does not
// fit the limit now.
func resendOne(ctx context.Context, rs resender, p *paho.Publish) error {
	limit := rs.limit()
	if fits(p, limit) {
		return rs.publish(ctx, p)
	}
	chunks, err := splitIntoChunks(p, limit)
	if err != nil {
		return err // its properties alone no longer fit: the peer's liveness ends the stream
	}
	return publishChunks(ctx, rs.publish, chunks)
}

// spawn runs f on a goroutine of the stream, unless it has ended.
func (st *clientStream) spawn(f func()) { spawnUnlessEnded(&st.mu, &st.ended, &st.pubs, f) }

// reconnected resumes the stream on the Conn's new connection: once its
// subscriptions are back, the open again if the server has not answered
// yet, and a resume message (the server resends what it sent meanwhile,
// its final message included), then what the server has not
// acknowledged.
func (st *clientStream) reconnected() {
	st.spawn(func() {
		if st.client.conn.waitReady(st.ctx) != nil {
			return
		}
		st.mu.Lock()
		accepted, open := st.gotFirst, st.openMsg
		st.mu.Unlock()
		if !accepted {
			if open == nil {
				return // not opened yet: Send publishes the open
			}
			// The server may never have had the open, or have it, be
			// done with it, and keep what the caller missed (a copy of
			// the open starts nothing there): the open, then a resume
			// without acknowledgement.
			if st.cc.target == TargetAny && !fits(open, st.client.conn.packetLimit()) {
				// The limit fell since: a share group would deal the
				// chunks out to several servers (docs/protocol.md,
				// "Chunking"). The resume alone may still reach the one.
				st.client.logger.Debug("mqttrpc: a stream's open to _any no longer fits the broker's Maximum Packet Size; not published again", "topic", open.Topic)
			} else if err := resendOne(st.ctx, st.resender(), open); err != nil {
				st.client.logger.Debug("mqttrpc: publishing a stream's open again failed", "topic", open.Topic, "error", err)
				return
			}
		}
		st.resend(st.message(resumeProps(st.recv.credit(), st.recv.received(), ""), nil), 0)
	})
}

// resender is how the caller's side publishes again.
func (st *clientStream) resender() resender {
	return resender{publish: st.client.conn.publish, limit: st.client.conn.packetLimit, logger: st.client.logger}
}

// resend is resendFrom on the caller's side: a message no longer kept
// breaks the stream with DataLoss.
func (st *clientStream) resend(first *paho.Publish, from int64) {
	if resendFrom(st.ctx, st.resender(), &st.out, first, from, st.expiry()) {
		st.breakWith(Errorf(DataLoss, "the server lost stream messages from %d that are no longer kept for resending", from))
	}
}

// received is the acknowledgement of the caller's messages; 0 for a
// server stream, whose caller sends none.
func (st *serverStream) received() int64 {
	if st.recv == nil {
		return 0
	}
	return st.recv.received()
}

// grantedCredit is the credit granted to the caller; 0 for a server
// stream.
func (st *serverStream) grantedCredit() int64 {
	if st.recv == nil {
		return 0
	}
	return st.recv.credit()
}

// spawn runs f on a goroutine of the stream, unless it has ended.
func (st *serverStream) spawn(f func()) { spawnUnlessEnded(&st.mu, &st.ended, &st.pubs, f) }

// reconnected resumes the stream on the server's new connection: a
// resume message, so that the caller resends what it sent meanwhile and
// learns our credit, then what the caller has not acknowledged (after
// the handler returned, the final message with it).
func (st *serverStream) reconnected() {
	st.spawn(func() {
		if st.s.conn.waitReady(st.pctx) != nil {
			return
		}
		st.resend(st.env.message(st.expiry(), resumeProps(st.grantedCredit(), st.received(), st.target), nil), 0)
	})
}

// resend is resendFrom on the server's side: the caller, missing a
// message no longer kept, ends the stream with DataLoss by its liveness.
func (st *serverStream) resend(first *paho.Publish, from int64) {
	rs := resender{publish: st.s.publish, limit: st.s.conn.packetLimit, logger: st.s.cfg.logger}
	if resendFrom(st.pctx, rs, &st.out, first, from, st.expiry()) {
		st.s.cfg.logger.Warn("mqttrpc: stream messages the caller lost are no longer kept; it will see DataLoss", "topic", st.env.topic, "from", from)
	}
}
