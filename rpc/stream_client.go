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
		return st.failSend(Errorf(Internal, "encoding a stream message: %v", err))
	}
	if len(payload) > st.client.maxPayload {
		return st.failSend(Errorf(ResourceExhausted, "stream message of %d bytes exceeds the client's limit of %d (WithMaxPayload)", len(payload), st.client.maxPayload))
	}
	p := st.message(dataProps(st.sendSeq, 0), payload)
	if limit := st.client.conn.packetLimit(); !fits(p, limit) {
		return st.sendChunks(p, limit)
	}
	st.out.add(st.sendSeq, p)
	st.sendSeq++
	st.sentCount.Store(st.sendSeq)
	return st.publishAsync(p)
}

// failSend ends the stream with err, a message that could not be sent:
// the server is told (a cancel), and Receive and later Sends report err,
// as in grpc-go. Going on would end the stream OK with a message missing.
func (st *clientStream) failSend(err *Error) error {
	st.abort(err)
	return err
}

// sendChunks sends data message p, which does not fit limit, in chunks
// (docs/protocol.md, "Chunking"); it counts as sent once every chunk is
// on its way. It is kept whole for resending, and split again then by
// the limit of that time (docs/protocol.md, "Resuming a stream").
func (st *clientStream) sendChunks(p *paho.Publish, limit int) error {
	chunks, err := splitIntoChunks(p, limit)
	if err != nil {
		return err
	}
	st.out.add(st.sendSeq, p)
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
