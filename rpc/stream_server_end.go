package rpc

// The end of a stream on the server: the final message after the handler
// returned, then lingering (stream_linger.go) or dropping the stream.

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"
)

// end ends the stream after its handler returned: the final message,
// then the stream lingers for its caller (stream_linger.go), or is
// dropped.
func (st *serverStream) end(handlerErr error) {
	st.mu.Lock()
	st.handlerDone = true
	st.mu.Unlock()
	// The keepalive ends with the handler: a lingering stream answers
	// its caller's instead.
	st.live.close()
	if st.recv != nil {
		st.recv.fail(Errorf(FailedPrecondition, "the stream's handler returned"))
	}
	// What the handler sent is acknowledged by the broker before the
	// final message goes: the final arrives after every data message, so
	// a consumer that stops at it misses none (docs/protocol.md,
	// "Consuming a server stream from another client"), and a data
	// message that failed is known to finish. Not when the handler's
	// context ended (the caller cancelled or went silent, the deadline
	// passed, Shutdown gave up): its publishes are cancelled instead.
	if st.ctx.Err() == nil {
		st.hpubs.Wait()
	}
	if st.finish(handlerErr) {
		// What the handler sent goes out before its worker is free, as
		// for a stream that does not linger.
		st.hpubs.Wait()
		if st.linger() {
			return
		}
	}
	// Nobody listens when the handler's context ended (the caller
	// cancelled, went silent, the deadline passed, shutdown gave up);
	// else the last messages go out before the stream is dropped.
	st.drop(st.ctx.Err() != nil)
}

// drop ends the stream for good: it stops routing the caller's messages
// to it and resuming it, and waits for its publishes, cancelled first
// when cancelFirst. It may be called more than once, from the handler's
// goroutine, the linger timer or Shutdown; each call returns once the
// stream is dropped.
func (st *serverStream) drop(cancelFirst bool) {
	st.mu.Lock()
	if st.ended {
		st.mu.Unlock()
		<-st.dropped
		return
	}
	st.ended = true
	timer := st.lingerTimer
	st.mu.Unlock()
	if timer != nil {
		timer.Stop()
	}
	if cancelFirst {
		st.pcancel()
	}
	st.hpubs.Wait()
	st.pubs.Wait()
	st.pcancel()
	s := st.s
	if st.key != "" {
		s.streamsMu.Lock()
		if s.streams[st.key] == st {
			delete(s.streams, st.key)
		}
		s.lingering.remove(st)
		s.streamsMu.Unlock()
		if st.chunked.Load() {
			s.chunks.forget(st.key)
		}
	}
	if st.unhook != nil {
		st.unhook()
	}
	close(st.dropped)
}

// runStreamHandler calls the handler and turns a panic into Internal.
func (s *Server) runStreamHandler(ctx context.Context, m *method, st *serverStream) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.cfg.logger.Error("mqttrpc: stream handler panicked", "method", m.stream.StreamName, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = Errorf(Internal, "handler panicked")
		}
	}()
	err = m.streamCall(ctx, st)
	if isNilError(err) {
		err = nil
	}
	return err
}

// finish sends the final message after the handler returned, unless the
// caller cancelled, the server's cap already answered, or the deadline
// passed. It reports whether the final message is kept for resending:
// it was published, or failed only because the connection was down or
// the caller had no subscription (docs/protocol.md, "After the handler
// returns").
func (st *serverStream) finish(handlerErr error) (kept bool) {
	s, req, p := st.s, st.req, st.req.publish
	if s.dedup.finishEntry(req.dedupEntry, nil) {
		return false // cancelled: nobody waits for the end
	}
	if !req.answered.CompareAndSwap(false, true) {
		return false // the server's cap answered DeadlineExceeded
	}
	if time.Until(req.callerDeadline) <= 0 {
		s.drop(DropExpired, p.Topic, "the stream's deadline passed before it ended")
		return false
	}
	st.mu.Lock()
	sendErr := st.sendErr
	trailers := st.trailers
	st.mu.Unlock()
	if sendErr != nil {
		s.count(DropResponseFailed, p.Topic)
		return false // a message is missing: the caller sees the stream stall, then its deadline
	}
	if cause := context.Cause(st.ctx); st.ctx.Err() != nil {
		if e := new(Error); errors.As(cause, &e) {
			handlerErr = e // liveness ended it: if the caller hears us, it learns why
		} else if s.baseCtx.Err() != nil {
			// Shutdown gave up waiting and ended the handler.
			handlerErr = Errorf(Unavailable, "server shut down while the stream ran")
		}
	}
	var rpcErr *Error
	if handlerErr != nil {
		rpcErr = asError(handlerErr)
		if rpcErr.Code() == OK {
			rpcErr = Errorf(Unknown, "handler returned an error with code OK: %s", rpcErr.Message())
		}
		for k, vs := range rpcErr.meta {
			trailers = appendMetadata(trailers, k, vs)
		}
	}
	var headers []userProperty
	if !st.headersSent {
		h, err := responseMetadata(st.call.respMeta)
		if err != nil {
			rpcErr, h = err, nil
		}
		headers = h
		if st.target != "" {
			headers = append(headers, userProperty{propTarget, st.target})
		}
	}
	tr, err := responseMetadata(trailers)
	if err != nil {
		rpcErr, tr = err, nil
	}
	// Not under baseCtx: after a Shutdown that gave up, the final message
	// still tells the caller why its stream ended.
	ctx, cancel := context.WithDeadline(context.Background(), req.callerDeadline)
	defer cancel()
	final := st.env.message(st.expiry(), finalProps(st.sendSeq, rpcErr, headers, tr), nil)
	if limit := s.conn.packetLimit(); !fits(final, limit) {
		// A final message goes whole: what does not fit is replaced.
		var target []userProperty
		if st.target != "" && !st.headersSent {
			target = []userProperty{{propTarget, st.target}}
		}
		why := Errorf(ResourceExhausted, "the stream's final message (status, message, headers and trailers) does not fit the broker's Maximum Packet Size of %d bytes", limit)
		final = st.env.message(st.expiry(), finalProps(st.sendSeq, why, target, nil), nil)
	}
	// Kept before it is published: a resume that comes meanwhile sends it
	// too.
	st.mu.Lock()
	st.finalSeq = st.sendSeq
	st.mu.Unlock()
	st.out.add(st.sendSeq, final)
	if err := s.publish(ctx, final); err != nil {
		if CodeOf(err) == Unavailable {
			s.cfg.logger.Debug("mqttrpc: the end of a stream was not published; it is kept for the caller's resumption", "topic", p.Topic, "error", err)
			return true
		}
		s.count(DropResponseFailed, p.Topic)
		s.cfg.logger.Warn("mqttrpc: publishing the end of a stream failed", "topic", p.Topic, "error", err)
		return false
	}
	s.stats.add(statServed)
	return true
}
