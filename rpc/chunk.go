package rpc

// Putting chunked messages together again (docs/protocol.md,
// "Reassembly"). Each Client and each Server keeps its incomplete
// messages here: each in one buffer of its announced size, which is at
// most WithMaxPayload, all of them together at most WithReassemblyLimit;
// each dropped when its first chunk expires, or when the call or stream
// it belongs to ends.

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// DefaultReassemblyLimit is the memory a Client or Server holds for
// incomplete chunked messages unless WithReassemblyLimit says otherwise
// (or WithMaxPayload is larger).
const DefaultReassemblyLimit = 64 << 20

// chunkEntryCost is what an entry's bookkeeping is counted as, besides
// its buffer, so that many small messages (or remembered ones) are
// bounded too.
const chunkEntryCost = 512

// chunkKey names a chunked message at its receiver (the direction is the
// receiver's own).
type chunkKey struct {
	// call: at a server the request's dedupKey (ResponseTopic and
	// CorrelationData), at a client the CorrelationData.
	call string
	// target: at a client the answer's mqttrpc-target (a broadcast's
	// answers share one CorrelationData).
	target string
	// seq is a stream message's mqttrpc-seq; -1 for a request or answer.
	seq int64
}

// reassembly holds the chunks of the incomplete messages of one Client or
// Server.
type reassembly struct {
	maxMessage int64 // WithMaxPayload
	limit      int64 // WithReassemblyLimit
	side       string
	// onExpire is told of an incomplete message dropped at its expiry,
	// with the topic of its first chunk. It runs on a timer's goroutine
	// with no lock held; nil: nobody is told.
	onExpire func(key chunkKey, topic string)

	active atomic.Int32 // len(entries), read without the lock

	mu      sync.Mutex
	held    int64
	entries map[chunkKey]*partialMessage
	closed  bool
}

// partialMessage is one message being put together, or one remembered
// after it was complete or refused (done) so that its late chunks are
// dropped.
type partialMessage struct {
	count, size int64
	length      int64 // L, the length of every chunk but the last; 0 until known
	buf         []byte
	have        []uint64 // a bit per chunk received
	got         int64
	first       *paho.Publish // chunk 0 without its payload; nil until it came
	arrival     time.Time     // when chunk 0 came
	topic       string        // of the first chunk to arrive
	cost        int64
	done        bool
	timer       *time.Timer
}

func newReassembly(maxMessage, limit int, side string) *reassembly {
	if limit <= 0 {
		limit = max(DefaultReassemblyLimit, maxMessage)
	}
	return &reassembly{maxMessage: int64(maxMessage), limit: int64(limit), side: side, entries: map[chunkKey]*partialMessage{}}
}

// chunkOutcome is what became of a chunk.
type chunkOutcome int

const (
	chunkKept     chunkOutcome = iota // the message is not complete yet
	chunkDropped                      // a copy, or a chunk of a message done with
	chunkComplete                     // the message is complete: chunkResult.message
	chunkRefused                      // the message is refused: chunkResult.err
)

// chunkResult is the outcome of add.
type chunkResult struct {
	outcome chunkOutcome
	message *paho.Publish // complete: chunk 0's properties, the message's ContentType, the whole payload
	arrival time.Time     // complete: when chunk 0 arrived
	err     *Error        // refused
	reason  DropReason    // refused: DropTooLarge, DropOverload or DropBadChunk
}

// add takes one chunk of message key, arrived at now; the message is
// dropped at expires if it is not complete by then. remember keeps the
// key until expires once the message is complete or refused, so that its
// later chunks are dropped; without it a complete message is forgotten
// at once (its receiver knows copies by other means).
func (r *reassembly) add(key chunkKey, p *paho.Publish, h chunkHeader, now, expires time.Time, remember bool) chunkResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return chunkResult{outcome: chunkDropped}
	}
	m := r.entries[key]
	if m == nil {
		switch {
		case !h.valid || h.size < 1 || h.count < 1 || h.count > h.size:
			return r.refuse(key, nil, remember, expires, DropBadChunk, Errorf(InvalidArgument, "malformed chunk: %s must be <index>/<count>/<size> with 1 <= count <= size", propChunk))
		case h.size > r.maxMessage:
			return r.refuse(key, nil, remember, expires, DropTooLarge, Errorf(ResourceExhausted, "message of %d bytes (announced by its chunks) exceeds the %s's limit of %d (WithMaxPayload)", h.size, r.side, r.maxMessage))
		}
		words := (h.count + 63) / 64
		cost := h.size + 8*words + chunkEntryCost
		if r.held+cost > r.limit {
			return r.refuse(key, nil, remember, expires, DropOverload, Errorf(ResourceExhausted, "a chunked message of %d bytes does not fit: the %s already holds %d bytes of incomplete chunked messages, its limit is %d (WithReassemblyLimit)", h.size, r.side, r.held, r.limit))
		}
		m = &partialMessage{count: h.count, size: h.size, buf: make([]byte, h.size), have: make([]uint64, words), topic: p.Topic, cost: cost}
		r.insert(key, m, expires)
	}
	if m.done {
		return chunkResult{outcome: chunkDropped}
	}
	if err := m.check(h, int64(len(p.Payload))); err != nil {
		// A stream message sent again after a reconnection is split by
		// the sender's limit then: its chunks may have another layout
		// (docs/protocol.md, "Reassembly").
		if !r.relayout(key, m, h) {
			return r.refuse(key, m, remember, expires, DropBadChunk, err)
		}
		if err := m.check(h, int64(len(p.Payload))); err != nil {
			return r.refuse(key, m, remember, expires, DropBadChunk, err)
		}
	}
	word, bit := h.index/64, uint64(1)<<(h.index%64)
	if m.have[word]&bit != 0 {
		return chunkResult{outcome: chunkDropped} // a copy: QoS 1 redelivery
	}
	if h.index == 0 {
		// A message type that names chunks again would be taken apart
		// again, without end.
		if mt, ok := messageContentType(p.Properties.ContentType); !ok || isChunkType(mt) {
			return r.refuse(key, m, remember, expires, DropBadChunk, Errorf(InvalidArgument, "malformed chunk: ContentType %q names no message content type", p.Properties.ContentType))
		}
		first := *p
		props := *p.Properties
		first.Properties, first.Payload = &props, nil
		m.first, m.arrival = &first, now
	}
	copy(m.buf[h.index*m.length:], p.Payload)
	m.have[word] |= bit
	m.got++
	if m.got < m.count {
		return chunkResult{outcome: chunkKept}
	}
	msg := m.first
	msg.Properties.ContentType, _ = messageContentType(msg.Properties.ContentType)
	msg.Payload = m.buf
	res := chunkResult{outcome: chunkComplete, message: msg, arrival: m.arrival}
	r.finish(key, m, remember)
	return res
}

// check validates chunk h, of n bytes, against the message m: the same
// count and size as the chunk that opened it, and a length that fits L
// (the last chunk holds the rest). It learns L from the first chunk that
// tells it.
func (m *partialMessage) check(h chunkHeader, n int64) *Error {
	if !h.valid || h.count != m.count || h.size != m.size || h.index < 0 || h.index >= m.count {
		return Errorf(InvalidArgument, "malformed chunk: %s %d/%d/%d contradicts the message's %d chunks of %d bytes", propChunk, h.index, h.count, h.size, m.count, m.size)
	}
	last := h.index == m.count-1
	if m.length == 0 {
		length := n
		if last && m.count > 1 {
			rest := m.size - n
			if rest <= 0 || rest%(m.count-1) != 0 {
				return Errorf(InvalidArgument, "malformed chunk: the last of %d chunks of a message of %d bytes cannot hold %d", m.count, m.size, n)
			}
			length = rest / (m.count - 1)
		}
		if length < 1 || (m.count-1)*length >= m.size || m.count*length < m.size {
			return Errorf(InvalidArgument, "malformed chunk: %d chunks of %d bytes do not make a message of %d bytes", m.count, length, m.size)
		}
		m.length = length
	}
	want := m.length
	if last {
		want = m.size - (m.count-1)*m.length
	}
	if n != want {
		return Errorf(InvalidArgument, "malformed chunk: chunk %d of %d has %d bytes, not %d", h.index, m.count, n, want)
	}
	return nil
}

// relayout starts stream message m of key again in the layout of chunk
// h, which contradicts what m holds, when h could be a chunk of the same
// message split at another limit: a stream message's chunk of the same
// size, with a count that fits it. What m holds is dropped: the sender
// sends every chunk of a message it sends again. r.mu is held.
func (r *reassembly) relayout(key chunkKey, m *partialMessage, h chunkHeader) bool {
	if key.seq < 0 || !h.valid || h.size != m.size || h.count < 1 || h.count > h.size || h.index < 0 || h.index >= h.count {
		return false
	}
	words := (h.count + 63) / 64
	cost := m.size + 8*words + chunkEntryCost
	r.held += cost - m.cost
	m.count, m.length, m.have, m.got, m.first, m.cost = h.count, 0, make([]uint64, words), 0, nil, cost
	return true
}

// insert files a new entry and arms its expiry. r.mu is held.
func (r *reassembly) insert(key chunkKey, m *partialMessage, expires time.Time) {
	r.entries[key] = m
	r.active.Store(int32(len(r.entries)))
	r.held += m.cost
	m.timer = time.AfterFunc(time.Until(expires), func() { r.expire(key, m) })
}

// remove drops an entry. r.mu is held.
func (r *reassembly) remove(key chunkKey, m *partialMessage) {
	m.timer.Stop()
	delete(r.entries, key)
	r.active.Store(int32(len(r.entries)))
	r.held -= m.cost
}

// finish ends a message that is complete or refused: it is remembered
// (its buffer freed) until it expires, or forgotten. r.mu is held.
func (r *reassembly) finish(key chunkKey, m *partialMessage, remember bool) {
	if !remember || r.held-m.cost+chunkEntryCost > r.limit {
		r.remove(key, m)
		return
	}
	r.held += chunkEntryCost - m.cost
	m.done, m.cost, m.buf, m.have, m.first = true, chunkEntryCost, nil, nil, nil
}

// refuse refuses message key (m is its entry, nil when it has none). r.mu
// is held.
func (r *reassembly) refuse(key chunkKey, m *partialMessage, remember bool, expires time.Time, reason DropReason, err *Error) chunkResult {
	switch {
	case m != nil:
		r.finish(key, m, remember)
	case remember && r.held+chunkEntryCost <= r.limit:
		r.insert(key, &partialMessage{cost: chunkEntryCost, done: true}, expires)
	}
	return chunkResult{outcome: chunkRefused, err: err, reason: reason}
}

// expire drops entry m of key when its time is up.
func (r *reassembly) expire(key chunkKey, m *partialMessage) {
	r.mu.Lock()
	if r.entries[key] != m {
		r.mu.Unlock()
		return
	}
	r.remove(key, m)
	incomplete := !m.done
	r.mu.Unlock()
	if incomplete && r.onExpire != nil {
		r.onExpire(key, m.topic)
	}
}

// forget drops every message of call (a call or stream that ended).
func (r *reassembly) forget(call string) {
	if r.active.Load() == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for key, m := range r.entries {
		if key.call == call {
			r.remove(key, m)
		}
	}
}

// close drops everything and takes no more chunks.
func (r *reassembly) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for key, m := range r.entries {
		r.remove(key, m)
	}
}

// heldBytes returns the memory counted for incomplete messages (tests).
func (r *reassembly) heldBytes() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.held
}
