package rpc

// The caller's side of a stream: opening it, sending with credit,
// receiving in order, and ending it (docs/protocol.md, "Streams").

import (
	"context"
	"errors"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/codec"
)

// maxInflightPublishes bounds the publishes of one stream that wait for
// the broker's acknowledgement: a sender does not wait for one PUBACK to
// send the next message (the receiver orders by sequence number).
const maxInflightPublishes = 64

// noMessage is the "request" of a client or bidi stream's open, which
// carries no message.
type noMessage struct{}

// clientStream is the runtime's StreamingClientConn.
type clientStream struct {
	client *Client
	cc     *clientCall
	desc   *StreamDesc
	ctx    context.Context // the stream's: the caller's, with a deadline
	cancel context.CancelFunc
	corr   [16]byte
	env    streamEnvelope // the client's messages; topic is the sticking server's once accepted
	recv   *recvQueue
	credit *sendCredit
	slots  chan struct{}  // publishes in flight
	pubs   sync.WaitGroup // publish goroutines; Add under mu while !ended
	out    replay         // numbered messages sent, until the server acknowledges them
	unhook func()         // removes the stream from its Conn's resumables

	accepted  chan struct{} // closed at the server's first message
	broken    chan struct{} // closed when the stream failed or ended
	done      chan struct{} // closed when end has run
	stopWatch func() bool   // stops the context watcher
	watchDone chan struct{} // closed when the watcher has run
	endOnce   sync.Once

	mu          sync.Mutex
	gotFirst    bool
	headers     Metadata
	headersSet  bool
	headersDone chan struct{} // closed once headers is final
	trailers    Metadata
	brokenErr   error
	ended       bool
	watching    bool // the watcher started: wait for watchDone
	openSent    bool
	openMsg     *paho.Publish // the open, published again after a reconnect until the server answers
	live        *liveness     // the keepalive, started with the open

	// sentCount is sendSeq for the keepalive's goroutine.
	sentCount atomic.Int64
	// chunked: a server message came in chunks; what is left of them is
	// dropped when the stream ends.
	chunked atomic.Bool
	// cancelOnEnd: the stream failed here (its server's chunks were
	// refused), and the server must be told.
	cancelOnEnd atomic.Bool

	// The sending goroutine's.
	sendSeq    int64
	opened     bool
	halfClosed bool
}

// openStream is the innermost step of opening a stream.
func (c *Client) openStream(ctx context.Context) StreamingClientConn {
	desc, _ := ctx.Value(streamDescKey{}).(*StreamDesc)
	cc, _ := ctx.Value(callKey{}).(*clientCall)
	if cc == nil || desc == nil {
		desc, cc = nil, &clientCall{cfg: callConfig{codec: codec.Proto}}
	}
	st := &clientStream{
		client:      c,
		cc:          cc,
		desc:        desc,
		recv:        newRecvQueue(int64(c.streamWindow)),
		credit:      newSendCredit(0, nil),
		slots:       make(chan struct{}, maxInflightPublishes),
		accepted:    make(chan struct{}),
		broken:      make(chan struct{}),
		done:        make(chan struct{}),
		watchDone:   make(chan struct{}),
		headersDone: make(chan struct{}),
	}
	if _, ok := ctx.Deadline(); ok {
		st.ctx, st.cancel = context.WithCancel(ctx)
	} else {
		st.ctx, st.cancel = context.WithTimeout(ctx, c.timeout)
	}
	st.env = streamEnvelope{qos: byte(cc.cfg.qos), responseTopic: c.responseTopic, contentType: responseContentType(cc.cfg.codec)}
	var err error
	if desc == nil {
		st.desc = &StreamDesc{} // the stream is ended at once: every method reports err
		err = Errorf(Internal, "a client interceptor opened a stream with a context that does not derive from the one it was given")
	} else if st.corr, err = c.conn.responses.registerStream(st); err == nil {
		st.env.correlationData = st.corr[:]
	}
	st.stopWatch = context.AfterFunc(st.ctx, st.onContextDone)
	if err != nil {
		st.end(err)
		return st
	}
	st.unhook = c.conn.addResumable(st)
	if desc.ClientStreams {
		st.opened = true
		if err := st.publishOpen(noMessage{}); err != nil {
			st.end(err)
		}
	}
	return st
}

// publishOpen publishes the open, with req as its message (noMessage for
// none).
func (st *clientStream) publishOpen(req any) error {
	c, cc := st.client, st.cc
	out, timeoutProp, err := c.prepare(cc, cc.template, req)
	if err != nil {
		return err
	}
	p := &out.publish
	p.Properties.User = append(p.Properties.User, paho.UserProperty{Key: propWindow, Value: strconv.Itoa(c.streamWindow)})
	if c.streamKeepalive > 0 {
		p.Properties.User = append(p.Properties.User, paho.UserProperty{Key: propKeepalive, Value: strconv.FormatInt(c.streamKeepalive.Milliseconds(), 10)})
	}
	p.Properties.CorrelationData = st.corr[:]
	st.env.topic = p.Topic
	st.mu.Lock()
	st.openSent = true
	st.openMsg = p
	st.mu.Unlock()
	if err := c.publishWithRetry(st.ctx, p, timeoutProp, cc.target); err != nil {
		return st.localError(err)
	}
	if c.streamKeepalive > 0 {
		st.mu.Lock()
		if !st.ended {
			st.live = startLiveness(c.streamKeepalive, st.ping, st.checkLiveness)
		}
		st.mu.Unlock()
	}
	return nil
}

// checkLiveness ends a stream whose server went silent (Unavailable) or
// one of whose messages never came (DataLoss); once the final message is
// in, nothing more is awaited.
func (st *clientStream) checkLiveness(silentFor time.Duration) (over bool) {
	limit := silenceFactor * st.client.streamKeepalive
	if st.recv.overdue(st.client.streamKeepalive) {
		// The broker lost a message the server sent: ask for it again.
		st.spawn(func() {
			p := st.message(resumeProps(st.recv.credit(), st.recv.received(), ""), nil)
			if err := st.client.conn.publish(st.ctx, p); err != nil {
				st.client.logger.Debug("mqttrpc: asking for a lost stream message failed", "topic", p.Topic, "error", err)
			}
		})
	}
	seq, pending, lost := st.recv.gap(limit)
	switch {
	case lost:
		st.breakWith(Errorf(DataLoss, "stream message %d from the server never arrived (it sent more %v ago)", seq, limit))
		return true
	case pending:
		return false
	case st.recv.ended():
		return true
	case silentFor > limit:
		st.breakWith(Errorf(Unavailable, "the server of the stream was silent for %v", limit))
		return true
	}
	return false
}

// ping is the keepalive: a credit message that repeats the credit granted
// and counts the messages sent.
func (st *clientStream) ping() {
	p := st.message(keepaliveProps(st.recv.credit(), st.recv.received(), st.sentCount.Load(), ""), nil)
	if err := st.client.conn.publish(st.ctx, p); err != nil {
		st.client.logger.Debug("mqttrpc: a stream keepalive was not published", "topic", p.Topic, "error", err)
	}
}

// onContextDone runs when the stream's context ends first: a cancelled
// caller sends the cancel message.
func (st *clientStream) onContextDone() {
	defer close(st.watchDone)
	st.mu.Lock()
	ended, openSent := st.ended, st.openSent
	st.mu.Unlock()
	if ended {
		return
	}
	err := st.localError(st.ctx.Err())
	if CodeOf(err) == Canceled && openSent {
		st.sendCancel()
	}
	st.end(err)
}

// sendCancel publishes the cancel message to the server that has the
// stream (the open's topic before it answered).
func (st *clientStream) sendCancel() {
	ctx, cancel := context.WithTimeout(context.Background(), cancelTimeout)
	defer cancel()
	st.mu.Lock()
	env := st.env
	st.mu.Unlock()
	p := env.message(st.expiry(), paho.UserProperties{{Key: propCancel, Value: "1"}}, nil)
	if err := st.client.conn.publish(ctx, p); err != nil {
		st.client.logger.Debug("mqttrpc: the cancel message of a stream was not delivered", "topic", p.Topic, "error", err)
	}
}

// expiry is the MessageExpiryInterval of a message sent now.
func (st *clientStream) expiry() uint32 {
	deadline, _ := st.ctx.Deadline()
	return expirySeconds(time.Until(deadline))
}

// localError maps a context's error to the code a caller sees.
func (st *clientStream) localError(err error) error {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return wrapCause(DeadlineExceeded, err, "stream deadline exceeded")
	case errors.Is(err, context.Canceled):
		return wrapCause(Canceled, err, "stream canceled")
	}
	return asError(err)
}

// breakWith fails the stream's waits with err; the first error stays.
func (st *clientStream) breakWith(err error) {
	st.mu.Lock()
	first := st.brokenErr == nil
	if first {
		st.brokenErr = err
	}
	st.mu.Unlock()
	if first {
		close(st.broken)
	}
	st.recv.fail(err)
	st.credit.fail(err)
}

func (st *clientStream) brokenError() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if errors.Is(st.brokenErr, io.EOF) {
		return nil
	}
	return st.brokenErr
}

// end ends the stream once with err (io.EOF for an OK end): it stops
// routing, releases the context and waits for the stream's publishes.
func (st *clientStream) end(err error) {
	st.endOnce.Do(func() {
		st.mu.Lock()
		st.ended = true
		st.mu.Unlock()
		st.setHeaders(nil) // no header comes any more
		st.breakWith(err)
		st.client.conn.responses.forgetStream(st.corr)
		if st.unhook != nil {
			st.unhook()
		}
		if st.chunked.Load() {
			st.client.chunks.forget(string(st.corr[:]))
		}
		if !st.stopWatch() {
			st.mu.Lock()
			st.watching = true
			st.mu.Unlock()
		}
		st.cancel()
		st.mu.Lock()
		live := st.live
		st.mu.Unlock()
		live.close()
		st.pubs.Wait()
		close(st.done)
	})
}

// join waits for the context watcher when it ran; the watcher itself
// never joins.
func (st *clientStream) join() {
	<-st.done
	st.mu.Lock()
	watching := st.watching
	st.mu.Unlock()
	if watching {
		<-st.watchDone
	}
}

// publishAsync publishes p on a goroutine of the stream. A message that
// did not reach the broker because the connection is down, or that the
// broker had nobody for (the server is reconnecting), stays in the replay
// buffer and goes out again when either side resumes; any other failure
// breaks the stream.
func (st *clientStream) publishAsync(p *paho.Publish) error {
	select {
	case st.slots <- struct{}{}:
	case <-st.broken:
		return st.sendError()
	}
	st.mu.Lock()
	if st.ended {
		st.mu.Unlock()
		<-st.slots
		return st.sendError()
	}
	st.pubs.Add(1)
	live := st.live
	st.mu.Unlock()
	live.sent()
	go func() {
		defer st.pubs.Done()
		err := st.client.conn.publish(st.ctx, p)
		<-st.slots
		if err != nil && st.ctx.Err() == nil && CodeOf(err) != Unavailable {
			st.breakWith(Errorf(CodeOf(err), "a stream message was not published: %s", asError(err).Message()))
		}
	}()
	return nil
}

// spawn runs f on a goroutine of the stream, unless it has ended.
func (st *clientStream) spawn(f func()) {
	st.mu.Lock()
	if st.ended {
		st.mu.Unlock()
		return
	}
	st.pubs.Add(1)
	st.mu.Unlock()
	go func() {
		defer st.pubs.Done()
		f()
	}()
}

// reconnected resumes the stream on the Conn's new connection (see
// resume.go): once its subscriptions are back, the open again if the
// server has not answered yet, else a resume message (the server resends
// what it sent meanwhile) and what the server has not acknowledged.
func (st *clientStream) reconnected() {
	st.spawn(func() {
		if st.client.conn.waitReady(st.ctx) != nil {
			return
		}
		st.mu.Lock()
		accepted, open := st.gotFirst, st.openMsg
		st.mu.Unlock()
		if !accepted {
			if open != nil {
				if err := st.client.conn.publish(st.ctx, open); err != nil {
					st.client.logger.Debug("mqttrpc: publishing a stream's open again failed", "topic", open.Topic, "error", err)
				}
			}
			return
		}
		st.resend(st.message(resumeProps(st.recv.credit(), st.recv.received(), ""), nil), 0)
	})
}

// resend publishes first (a resume or credit message), then the buffered
// messages numbered from and above. A message no longer kept breaks the
// stream with DataLoss.
func (st *clientStream) resend(first *paho.Publish, from int64) {
	if err := st.client.conn.publish(st.ctx, first); err != nil {
		st.client.logger.Debug("mqttrpc: resuming a stream failed", "topic", first.Topic, "error", err)
		return
	}
	msgs, missing := st.out.from(from, st.expiry())
	if missing {
		st.breakWith(Errorf(DataLoss, "the server lost stream messages from %d that are no longer kept for resending", from))
		return
	}
	for _, p := range msgs {
		if err := st.client.conn.publish(st.ctx, p); err != nil {
			st.client.logger.Debug("mqttrpc: resending a stream message failed", "topic", p.Topic, "error", err)
			return
		}
	}
}

// sendError is what Send returns once the stream is broken: io.EOF when
// the server ended it (its status comes from Receive), else the error.
func (st *clientStream) sendError() error {
	st.mu.Lock()
	err := st.brokenErr
	st.mu.Unlock()
	if err == nil {
		return io.EOF // the server ended the stream
	}
	var rpcErr *Error
	if errors.Is(err, io.EOF) || (errors.As(err, &rpcErr) && rpcErr.wire) {
		return io.EOF
	}
	return err
}

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
	if sp.resume && sp.ack >= 0 {
		// The server reconnected: it missed what we sent meanwhile, and
		// our credit.
		from := sp.ack
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

// Call implements StreamingClientConn.
func (st *clientStream) Call() *Call { return &st.cc.Call }

// Send implements StreamingClientConn.
func (st *clientStream) Send(msg any) error {
	select {
	case <-st.broken:
		return st.sendError()
	default:
	}
	if !st.desc.ClientStreams {
		if st.opened {
			return Errorf(Internal, "a server-streaming call sends one request")
		}
		st.opened = true
		if err := st.publishOpen(msg); err != nil {
			st.end(err)
			return err
		}
		return nil
	}
	if st.halfClosed {
		return Errorf(FailedPrecondition, "send after CloseSend")
	}
	if err := st.waitAccepted(); err != nil {
		return err
	}
	if err := st.credit.wait(st.ctx, st.sendSeq); err != nil {
		if st.ctx.Err() != nil {
			return st.localError(st.ctx.Err())
		}
		if errors.Is(err, io.EOF) {
			return io.EOF // the server ended the stream: Receive has its status
		}
		return st.sendError()
	}
	payload, err := st.cc.cfg.codec.Marshal(msg)
	if err != nil {
		return Errorf(Internal, "encoding a stream message: %v", err)
	}
	if len(payload) > st.client.maxPayload {
		return Errorf(ResourceExhausted, "stream message of %d bytes exceeds the client's limit of %d (WithMaxPayload)", len(payload), st.client.maxPayload)
	}
	p := st.message(dataProps(st.sendSeq, 0), payload)
	if limit := st.client.conn.packetLimit(); !fits(p, limit) {
		st.out.skip(st.sendSeq) // not kept for resending (docs/protocol.md, "Resuming a stream")
		return st.sendChunks(p, limit)
	}
	st.out.add(st.sendSeq, p)
	st.sendSeq++
	st.sentCount.Store(st.sendSeq)
	return st.publishAsync(p)
}

// sendChunks sends data message p, which does not fit limit, in chunks
// (docs/protocol.md, "Chunking"); it counts as sent once every chunk is
// on its way.
func (st *clientStream) sendChunks(p *paho.Publish, limit int) error {
	chunks, err := splitIntoChunks(p, limit)
	if err != nil {
		return err
	}
	for _, chunk := range chunks {
		if err := st.publishAsync(chunk); err != nil {
			return err
		}
	}
	st.sendSeq++
	st.sentCount.Store(st.sendSeq)
	return nil
}

// message builds a client message to the server that has the stream.
func (st *clientStream) message(user paho.UserProperties, payload []byte) *paho.Publish {
	st.mu.Lock()
	env := st.env
	st.mu.Unlock()
	return env.message(st.expiry(), user, payload)
}

// waitAccepted waits for the server's first message: nothing but the open
// and a cancel goes out before it.
func (st *clientStream) waitAccepted() error {
	select {
	case <-st.accepted:
		return nil
	case <-st.broken:
		return st.sendError()
	}
}

// CloseSend implements StreamingClientConn.
func (st *clientStream) CloseSend() error {
	if !st.desc.ClientStreams || st.halfClosed {
		return nil // a server stream's open is its half-close
	}
	st.halfClosed = true
	if err := st.waitAccepted(); err != nil {
		return err
	}
	st.sentCount.Store(st.sendSeq + 1) // the half-close is numbered too
	p := st.message(halfCloseProps(st.sendSeq), nil)
	st.out.add(st.sendSeq, p)
	return st.publishAsync(p)
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
