package rpc

// The caller's side of a stream, receiving: the server's messages routed
// in (whole or in chunks), in order, to Receive; the headers, trailers and
// the end (docs/protocol.md, "Streams").

import (
	"errors"
	"io"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// deliver takes a message of the stream from the response router, on
// paho's receive goroutine; it never blocks.
func (st *clientStream) deliver(p *paho.Publish) {
	if isChunk(p) {
		st.deliverChunk(p)
		return
	}
	st.deliverWhole(p)
}

// deliverWhole takes a message of the stream that arrived whole or was
// put together from its chunks.
func (st *clientStream) deliverWhole(p *paho.Publish) {
	sp := readStreamProps(p)
	// The server's first message is the credit that accepts a client or
	// bidi stream, or message 0 (publishes may pass each other on the
	// way: the first to arrive need not be the first sent).
	acceptance := sp.seq == 0 || (sp.seq < 0 && sp.credit >= 0)
	st.mu.Lock()
	first := acceptance && !st.gotFirst
	if first {
		st.gotFirst = true
	}
	live := st.live
	st.mu.Unlock()
	live.heard()
	if first {
		if err := st.accept(sp.target); err != nil {
			st.breakWith(err)
			return
		}
	}
	if sp.credit >= 0 {
		st.credit.grant(sp.credit)
	}
	if sp.ack >= 0 {
		st.out.ack(sp.ack)
	}
	if sp.resume {
		// The server reconnected: it missed what we sent meanwhile, and
		// our credit.
		from := max(sp.ack, 0) // absent: it has nothing
		st.spawn(func() { st.resend(st.message(creditProps(st.recv.credit(), st.recv.received(), ""), nil), from) })
	}
	if sp.sent >= 0 {
		st.recv.noteSent(sp.sent)
	}
	switch {
	case sp.seq >= 0:
		if sp.hasStatus {
			st.credit.fail(io.EOF) // the server is done: a Send waiting for credit returns
		}
		if sp.seq == 0 {
			// The first server message carries the headers (a final
			// one first carries the trailers too).
			md := Metadata{}
			readMetadata(p, md)
			st.setHeaders(md)
		}
		st.recv.push(sp.seq, p, sp.hasStatus)
	case sp.hasStatus:
		// A unary answer: the server refused the open.
		err := readStatus(p, Metadata{})
		if err == nil {
			err = Errorf(Internal, "the server answered the stream's open as a unary call")
		}
		st.breakWith(explainChunkRefusal(err))
	case sp.credit < 0:
		st.breakWith(Errorf(Internal, "the server sent a stream message without %s, %s or %s", propSeq, propCredit, propStatus))
	}
}

// deliverChunk files a chunk of a server message, on paho's receive
// goroutine, and delivers the message once complete (docs/protocol.md,
// "Reassembly").
func (st *clientStream) deliverChunk(p *paho.Publish) {
	st.mu.Lock()
	live := st.live
	st.mu.Unlock()
	live.heard()
	h := readChunk(p)
	if h.seq < 0 {
		st.failHere(Errorf(Internal, "the server sent a chunk without %s", propSeq))
		return
	}
	if !st.recv.admits(h.seq) {
		return // a copy, or the stream is over
	}
	st.recv.progress(h.seq)
	st.chunked.Store(true)
	deadline, _ := st.ctx.Deadline()
	key := chunkKey{call: string(st.corr[:]), target: h.target, seq: h.seq}
	switch res := st.client.chunks.add(key, p, h, time.Now(), deadline, false); res.outcome {
	case chunkComplete:
		st.deliverWhole(res.message)
	case chunkRefused:
		err := res.err
		if err.Code() == InvalidArgument {
			err = Errorf(Internal, "the server's stream message came in %s", err.Message())
		}
		st.failHere(err)
	}
}

// failHere ends the stream with an error decided here; the server is told
// (a cancel) when the application sees it.
func (st *clientStream) failHere(err *Error) {
	st.cancelOnEnd.Store(true)
	st.breakWith(err)
}

// accept records the server's first message: for a stream to _any, the
// server that took it, where its later messages go.
func (st *clientStream) accept(target string) error {
	cc := st.cc
	if cc.target == TargetAny {
		if target == "" {
			return Errorf(Internal, "the first message of a stream to _any does not name its server (%s)", propTarget)
		}
		if err := checkID("target", target); err != nil {
			return Errorf(Internal, "the server of a stream to _any names itself %q: %s", target, asError(err).Message())
		}
		topic, err := cc.template.render(&topicValues{service: cc.service, target: target, method: cc.method, custom: cc.tokens})
		if err != nil {
			return err
		}
		st.mu.Lock()
		st.env.topic = topic
		st.mu.Unlock()
		cc.answeredBy = target
	} else {
		cc.answeredBy = cc.target
	}
	close(st.accepted)
	return nil
}

// Receive implements StreamingClientConn.
func (st *clientStream) Receive(msg any) error {
	p, end, grant, err := st.recv.pop(st.ctx)
	if err != nil {
		if st.ctx.Err() != nil && !errors.Is(err, io.EOF) {
			err = st.localError(st.ctx.Err())
		}
		if CodeOf(err) == Canceled || st.cancelOnEnd.Load() {
			st.abort(err)
		} else {
			st.end(err)
			st.join()
		}
		st.mu.Lock()
		err = st.brokenErr
		st.mu.Unlock()
		return err
	}
	if end {
		md := Metadata{}
		status := readStatus(p, md)
		st.mu.Lock()
		st.trailers = md
		st.mu.Unlock()
		var result error = io.EOF
		if status != nil {
			result = status
		}
		st.end(result)
		st.join()
		return result
	}
	if grant > 0 {
		if err := st.publishAsync(st.message(creditProps(grant, st.recv.received(), ""), nil)); err != nil {
			return err
		}
	}
	if err := decodePayload(st.cc.cfg.codec, p, msg, st.client.maxPayload); err != nil {
		if CodeOf(err) == InvalidArgument {
			err = Errorf(Internal, "%s", asError(err).Message())
		}
		st.abort(err)
		return err
	}
	return nil
}

// abort ends an open stream with err and cancels it on the wire.
func (st *clientStream) abort(err error) {
	st.mu.Lock()
	ended, openSent := st.ended, st.openSent
	st.mu.Unlock()
	if !ended && openSent {
		st.sendCancel()
	}
	st.end(err)
	st.join()
}

// CloseReceive implements StreamingClientConn.
func (st *clientStream) CloseReceive() error {
	st.abort(Errorf(Canceled, "stream closed by the caller"))
	return nil
}

// setHeaders makes md the response headers unless they are set.
func (st *clientStream) setHeaders(md Metadata) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.headersSet {
		st.headers, st.headersSet = md, true
		st.cc.respMeta = md // the Call's response metadata, as for unary calls
		if ptr := st.cc.cfg.responseMetadata; ptr != nil && md != nil {
			// ResponseMetadata: set before the first message or the end
			// is delivered, so the caller sees it after a Recv.
			*ptr = md
		}
		close(st.headersDone)
	}
}

// ResponseHeader implements StreamingClientConn.
func (st *clientStream) ResponseHeader() Metadata {
	<-st.headersDone // closed by the first message or the end
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.headers
}

// ResponseTrailer implements StreamingClientConn.
func (st *clientStream) ResponseTrailer() Metadata {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.trailers
}
