package rpc

// Streams after their handler returned (docs/protocol.md, "After the
// handler returns"): the caller acknowledges nothing after the final
// message, so the server keeps it, with what of its replay buffer the
// caller has not acknowledged, for a bounded time, and sends it again
// when the caller resumes (or asks with a keepalive that shows it lacks
// it), or when the server's own connection is back. A lingering stream
// holds no goroutine: a timer drops it, and a resend runs only while it
// publishes.

import (
	"time"
)

const (
	// lingerWithoutKeepalive bounds the lingering of a stream whose
	// caller asked for no keepalive: three times the Go client's
	// default keepalive, as if it had asked for that.
	lingerWithoutKeepalive = silenceFactor * DefaultStreamKeepalive
	// lingerLimit bounds the lingering streams of a Server: beyond, the
	// oldest is dropped first.
	lingerLimit = 1024
	// lingerBytes bounds the payloads they keep (their messages' and
	// their opens').
	lingerBytes = 16 << 20
	// lingerOverhead is what a lingering stream counts as besides its
	// payloads, so that many small ones are bounded by lingerBytes too.
	lingerOverhead = 1024
)

// linger keeps the stream after its handler returned and its final
// message was made, for 3 × keepalive or until the deadline, whichever
// is first; it reports false when the stream cannot linger (nothing
// routes the caller's messages to a stream without CorrelationData, the
// deadline has passed, the server is stopping), and the caller must
// drop it.
func (st *serverStream) linger() bool {
	s := st.s
	if st.key == "" {
		return false
	}
	bound := lingerWithoutKeepalive
	if st.keepalive > 0 {
		bound = silenceFactor * st.keepalive
	}
	bound = min(bound, time.Until(st.req.callerDeadline))
	if bound <= 0 {
		return false
	}
	// What it keeps: its messages, and the open it came with.
	cost := st.out.payloadBytes() + len(st.req.publish.Payload) + lingerOverhead
	s.streamsMu.Lock()
	if s.baseCtx.Err() != nil {
		// Shutdown has dropped the lingering streams, or is about to
		// without waiting for them.
		s.streamsMu.Unlock()
		return false
	}
	st.mu.Lock()
	st.lingering = true
	st.lingerTimer = time.AfterFunc(bound, func() { st.drop(true) })
	st.mu.Unlock()
	evicted := s.lingering.add(st, cost)
	s.streamsMu.Unlock()
	for _, old := range evicted {
		old.drop(true)
	}
	return true
}

// lingerSet holds a Server's lingering streams, oldest first, under
// Server.streamsMu.
type lingerSet struct {
	first, last *serverStream
	n           int
	bytes       int
}

// add files st, which counts as cost bytes, and returns the streams it
// pushed over the limits (the oldest), removed: the caller drops them
// outside the lock. The newest stays, whatever it costs.
func (l *lingerSet) add(st *serverStream, cost int) (evicted []*serverStream) {
	st.lingerCost, st.lingerPrev, st.lingerNext = cost, l.last, nil
	if l.last != nil {
		l.last.lingerNext = st
	} else {
		l.first = st
	}
	l.last = st
	st.lingerIn = true
	l.n++
	l.bytes += cost
	for l.n > 1 && (l.n > lingerLimit || l.bytes > lingerBytes) {
		old := l.first
		l.remove(old)
		evicted = append(evicted, old)
	}
	return evicted
}

// remove takes st out of the set, if it is in.
func (l *lingerSet) remove(st *serverStream) {
	if !st.lingerIn {
		return
	}
	if st.lingerPrev != nil {
		st.lingerPrev.lingerNext = st.lingerNext
	} else {
		l.first = st.lingerNext
	}
	if st.lingerNext != nil {
		st.lingerNext.lingerPrev = st.lingerPrev
	} else {
		l.last = st.lingerPrev
	}
	st.lingerPrev, st.lingerNext, st.lingerIn = nil, nil, false
	l.n--
	l.bytes -= st.lingerCost
}

// takeAll empties the set and returns what it held.
func (l *lingerSet) takeAll() []*serverStream {
	all := make([]*serverStream, 0, l.n)
	for l.first != nil {
		st := l.first
		l.remove(st)
		all = append(all, st)
	}
	return all
}

// dropLingering drops every lingering stream, for Shutdown once it has
// cancelled baseCtx (no stream starts lingering after that). It waits for
// no more than their resends in flight, which baseCtx has cancelled.
func (s *Server) dropLingering() {
	s.streamsMu.Lock()
	all := s.lingering.takeAll()
	s.streamsMu.Unlock()
	for _, st := range all {
		st.drop(true)
	}
}
