package rpc

// Flow control and ordering of streams (docs/protocol.md, "Flow control"):
// a sender waits for credit, a receiver puts messages in sequence order,
// drops copies and grants credit as the application consumes. Both halves
// are used by the client and the server side alike; neither blocks the
// MQTT client's receive goroutine.

import (
	"context"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// sendCredit is a sender's view of the credit its receiver granted: it may
// send the data messages numbered below limit. One goroutine sends.
type sendCredit struct {
	mu    sync.Mutex
	limit int64
	err   error         // the stream ended: waiting is over
	wake  chan struct{} // one slot: credit grew or err was set
	// onWait (tests) is told when a sender is about to wait for credit,
	// with the number it waits to send.
	onWait func(seq int64)
}

func newSendCredit(limit int64, onWait func(int64)) *sendCredit {
	return &sendCredit{limit: limit, wake: make(chan struct{}, 1), onWait: onWait}
}

// grant raises the limit to credit; credit is cumulative, so a copy or a
// late credit message lowers nothing.
func (c *sendCredit) grant(credit int64) {
	c.mu.Lock()
	grew := credit > c.limit
	if grew {
		c.limit = credit
	}
	c.mu.Unlock()
	if grew {
		c.signal()
	}
}

// fail ends waiting with err.
func (c *sendCredit) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	c.signal()
}

func (c *sendCredit) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// wait returns when message seq may be sent, the stream failed, or ctx
// ended.
func (c *sendCredit) wait(ctx context.Context, seq int64) error {
	told := false
	for {
		c.mu.Lock()
		limit, err := c.limit, c.err
		c.mu.Unlock()
		if err != nil {
			return err
		}
		if seq < limit {
			return nil
		}
		if !told && c.onWait != nil {
			told = true
			c.onWait(seq)
		}
		select {
		case <-c.wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// recvQueue is a receiver's side of one direction of a stream: messages
// in sequence order, copies dropped, credit granted as they are consumed.
// One goroutine consumes; push never blocks.
type recvQueue struct {
	window int64

	mu      sync.Mutex
	next    int64                   // the number to deliver next
	early   map[int64]*paho.Publish // arrived, not yet delivered
	endSeq  int64                   // the number of the end marker (half-close, final); -1 until known
	granted int64                   // credit granted so far
	err     error                   // the stream ended here
	wake    chan struct{}           // one slot
	// A gap: the peer said it had sent more than next messages (its
	// keepalive's mqttrpc-sent, or its end marker) while next was
	// awaited, and since awaitedSince next has not come.
	awaited      int64
	awaitedSince time.Time
	askedFor     int64 // 1 + the message asked for again (overdue); 0: none
}

func newRecvQueue(window int64) *recvQueue {
	return &recvQueue{window: window, granted: window, endSeq: -1, early: map[int64]*paho.Publish{}, wake: make(chan struct{}, 1)}
}

// push takes message seq; end marks the end of the direction (a
// half-close or a final message), which needs no credit. A copy of a
// delivered or waiting message is dropped; a data message beyond the
// credit granted ends the stream with Internal.
func (q *recvQueue) push(seq int64, p *paho.Publish, end bool) {
	q.mu.Lock()
	switch {
	case q.err != nil, seq < q.next, q.early[seq] != nil:
		// Ended, or a copy (a QoS 1 redelivery).
	case end && q.endSeq >= 0 && q.endSeq != seq, !end && q.endSeq >= 0 && seq >= q.endSeq:
		q.err = Errorf(Internal, "stream message %d contradicts the end of the stream at %d", seq, q.endSeq)
	case !end && seq >= q.granted:
		q.err = Errorf(Internal, "the peer sent stream message %d beyond the credit of %d it was granted", seq, q.granted)
	default:
		if end {
			q.endSeq = seq
			q.sentLocked(seq) // the end says how many came before it
		}
		q.early[seq] = p
	}
	q.mu.Unlock()
	q.signal()
}

// admits reports whether a chunk of data message seq is worth keeping
// (docs/protocol.md, "Chunking"): not when the message was delivered or
// is waiting already (a copy), nor when the queue has ended. A message
// beyond the credit granted, or past the end, ends the stream with
// Internal, as push does.
func (q *recvQueue) admits(seq int64) bool {
	q.mu.Lock()
	ok := false
	switch {
	case q.err != nil, seq < 0, seq < q.next, q.early[seq] != nil:
	case q.endSeq >= 0 && seq >= q.endSeq:
		q.err = Errorf(Internal, "stream message %d contradicts the end of the stream at %d", seq, q.endSeq)
	case seq >= q.granted:
		q.err = Errorf(Internal, "the peer sent stream message %d beyond the credit of %d it was granted", seq, q.granted)
	default:
		ok = true
	}
	failed := q.err != nil
	q.mu.Unlock()
	if failed {
		q.signal()
	}
	return ok
}

// progress records a chunk of message seq: when it is the message
// awaited since the peer said it sent it, the wait for it starts again, so
// that a large message is lost only when its chunks stop coming.
func (q *recvQueue) progress(seq int64) {
	q.mu.Lock()
	if seq == q.next && q.awaited == q.next && !q.awaitedSince.IsZero() {
		q.awaitedSince = time.Now()
	}
	q.mu.Unlock()
}

// noteSent takes the peer's count of the data messages it has sent.
func (q *recvQueue) noteSent(n int64) {
	q.mu.Lock()
	q.sentLocked(n)
	q.mu.Unlock()
}

func (q *recvQueue) sentLocked(n int64) {
	switch {
	case n <= q.next:
		if q.awaited < q.next {
			q.awaitedSince = time.Time{}
		}
	case q.awaitedSince.IsZero() || q.awaited != q.next:
		q.awaited, q.awaitedSince = q.next, time.Now()
	}
}

// gap reports a message the peer has sent that has not arrived: pending
// since the peer said so, lost when that was longer ago than limit.
func (q *recvQueue) gap(limit time.Duration) (seq int64, pending, lost bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.awaitedSince.IsZero() || q.awaited != q.next || q.early[q.next] != nil {
		return 0, false, false
	}
	return q.next, true, time.Since(q.awaitedSince) > limit
}

// overdue reports a message the peer has sent that has not arrived for
// longer than after, once per such message: the receiver asks the peer to
// send it again (docs/protocol.md, "Resuming a stream").
func (q *recvQueue) overdue(after time.Duration) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.awaitedSince.IsZero() || q.awaited != q.next || q.early[q.next] != nil || q.askedFor == q.next+1 {
		return false
	}
	if time.Since(q.awaitedSince) <= after {
		return false
	}
	q.askedFor = q.next + 1
	return true
}

// ended reports whether the end marker has arrived (it may not be
// consumed yet).
func (q *recvQueue) ended() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.endSeq >= 0
}

// fail ends the queue with err; messages not yet consumed are dropped.
func (q *recvQueue) fail(err error) {
	q.mu.Lock()
	if q.err == nil {
		q.err = err
	}
	q.mu.Unlock()
	q.signal()
}

func (q *recvQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// pop returns the next message in order; end says it is the end marker.
// grant is the credit to send to the peer now, 0 for none: the window is
// granted again in steps of at least half of it.
func (q *recvQueue) pop(ctx context.Context) (p *paho.Publish, end bool, grant int64, err error) {
	for {
		q.mu.Lock()
		if q.err != nil {
			err = q.err
			q.mu.Unlock()
			return nil, false, 0, err
		}
		if p = q.early[q.next]; p != nil {
			delete(q.early, q.next)
			end = q.next == q.endSeq
			q.next++
			if !end {
				if credit := q.next + q.window; credit-q.granted >= max(q.window/2, 1) {
					q.granted, grant = credit, credit
				}
			}
			q.mu.Unlock()
			return p, end, grant, nil
		}
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-ctx.Done():
			return nil, false, 0, ctx.Err()
		}
	}
}

// received returns the acknowledgement to send: every message numbered
// below it has arrived (consumed, or waiting in order).
func (q *recvQueue) received() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := q.next
	for q.early[n] != nil {
		n++
	}
	return n
}

// credit returns the credit granted so far.
func (q *recvQueue) credit() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.granted
}
