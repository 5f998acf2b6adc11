package rpc

// The server's side of a stream: accepting it, running its handler,
// routing the client's later messages to it, and the final message
// (docs/protocol.md, "Streams"). After the handler, the stream may linger
// for its caller to come back for its end (stream_linger.go).

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/codec"
)

// serverStream is the runtime's StreamingHandlerConn.
type serverStream struct {
	s     *Server
	req   *request
	call  *Call
	desc  *StreamDesc
	codec codec.Codec
	ctx   context.Context // the handler's
	// pctx is the stream's publishes': it lasts until the stream is
	// dropped (after the handler, or after lingering), the caller's
	// deadline or the server's stop.
	pctx    context.Context
	pcancel context.CancelFunc
	key     string         // dedupKey of the open; "" without CorrelationData
	env     streamEnvelope // to the caller's response topic
	target  string         // this server's ID, named on the first message of a stream to _any
	recv    *recvQueue     // client and bidi streams
	credit  *sendCredit
	slots   chan struct{}  // publishes in flight
	hpubs   sync.WaitGroup // the handler's publish goroutines; Add under mu while !handlerDone
	pubs    sync.WaitGroup // the others (resends, asking again); Add under mu while !ended
	out     replay         // numbered messages sent, until the caller acknowledges them
	live    *liveness      // nil when the caller asked for no keepalive
	// keepalive is the caller's mqttrpc-keepalive (0: none).
	keepalive time.Duration
	unhook    func()        // removes the stream from the Conn's resumables; nil until the handler runs
	dropped   chan struct{} // closed when drop has run
	// sentCount is sendSeq for the keepalive's goroutine.
	sentCount atomic.Int64
	// chunked: a message of the caller came in chunks; what is left of
	// them is dropped when the stream ends.
	chunked atomic.Bool

	mu          sync.Mutex
	ended       bool  // dropped: nothing more is published, pubs may be waited for
	handlerDone bool  // the handler returned: it publishes nothing more
	sendErr     error // a publish failed: the stream is broken
	trailers    Metadata
	lingering   bool        // the handler returned, the stream is kept for its caller
	finalSeq    int64       // lingering: the final message's number
	lingerTimer *time.Timer // lingering: drops the stream

	// Under Server.streamsMu: the stream's place among the lingering.
	lingerPrev, lingerNext *serverStream
	lingerIn               bool
	lingerCost             int

	// The handler's goroutine's.
	sendSeq     int64
	headersSent bool
	openRead    bool
}

// serveStream runs a streaming method's handler for req and ends the
// stream with its final message. It runs on a worker, in place of a
// unary handler.
func (s *Server) serveStream(ctx context.Context, req *request, call *Call, cd codec.Codec) {
	p := req.publish
	props := p.Properties
	desc := req.method.stream
	key := ""
	if len(props.CorrelationData) > 0 {
		key = dedupKey(props.ResponseTopic, props.CorrelationData)
	}
	switch target := req.values.target; {
	case target == TargetAll:
		s.respond(ctx, req, call, cd, nil, Errorf(InvalidArgument, "a stream cannot be addressed to _all: it has one server"))
		return
	case target == TargetAny && s.cfg.serverID == "":
		s.respond(ctx, req, call, cd, nil, Errorf(FailedPrecondition, "this server has no ID, so the later messages of a stream to _any cannot reach it"))
		return
	case desc.ClientStreams && key == "":
		s.respond(ctx, req, call, cd, nil, Errorf(InvalidArgument, "a client or bidirectional stream needs CorrelationData to name it"))
		return
	}
	window, keepalive := readOpen(p)
	ctx, silenced := context.WithCancelCause(ctx)
	defer silenced(nil)
	pctx, pcancel := context.WithDeadline(s.baseCtx, req.callerDeadline)
	st := &serverStream{
		s:         s,
		req:       req,
		call:      call,
		desc:      desc,
		codec:     cd,
		ctx:       ctx,
		pctx:      pctx,
		pcancel:   pcancel,
		key:       key,
		keepalive: keepalive,
		env:       streamEnvelope{qos: p.QoS, topic: props.ResponseTopic, correlationData: props.CorrelationData, contentType: responseContentType(cd)},
		credit:    newSendCredit(window, s.cfg.onCreditWait),
		slots:     make(chan struct{}, maxInflightPublishes),
		dropped:   make(chan struct{}),
	}
	if t := req.values.target; (t == TargetAny || t == TargetAll) && s.cfg.serverID != "" {
		st.target = s.cfg.serverID
	}
	if desc.ClientStreams {
		st.recv = newRecvQueue(int64(s.cfg.streamWindow))
	}
	if keepalive > 0 { // before st is shared: streamMessage reads st.live
		limit := silenceFactor * keepalive
		st.live = startLiveness(keepalive, st.ping, func(silentFor time.Duration) bool {
			if st.recv != nil {
				if st.recv.overdue(keepalive) {
					// The broker lost a message the caller sent: ask for it again.
					st.spawn(func() {
						m := st.env.message(st.expiry(), resumeProps(st.recv.credit(), st.recv.received(), st.target), nil)
						if err := s.publish(st.pctx, m); err != nil {
							s.cfg.logger.Debug("mqttrpc: asking for a lost stream message failed", "topic", st.env.topic, "error", err)
						}
					})
				}
				if seq, _, lost := st.recv.gap(limit); lost {
					silenced(Errorf(DataLoss, "stream message %d from the caller never arrived (it sent more %v ago)", seq, limit))
					return true
				}
			}
			if silentFor > limit {
				s.count(DropSilentPeer, p.Topic)
				silenced(Errorf(Unavailable, "the caller of the stream was silent for %v", limit))
				return true
			}
			return false
		})
	}
	if key != "" {
		s.streamsMu.Lock()
		if s.streams[key] != nil {
			// A copy of the open that the deduplication of requests no
			// longer knows (it evicted the entry): the stream runs, or
			// lingers, already.
			s.streamsMu.Unlock()
			s.count(DropDuplicate, p.Topic)
			s.dedup.finishEntry(req.dedupEntry, nil)
			req.ack()
			st.live.close()
			pcancel()
			return
		}
		s.streams[key] = st
		s.streamsMu.Unlock()
	}
	// A stream holds its worker for long: its open is acknowledged now,
	// so that it does not hold back the acknowledgements of later packets.
	req.ack()
	if desc.ClientStreams {
		// Accepting: the caller may send once it has credit, to us.
		accept := st.env.message(st.expiry(), creditProps(int64(s.cfg.streamWindow), 0, st.target), nil)
		if err := s.publish(ctx, accept); err != nil {
			s.count(DropResponseFailed, p.Topic)
			s.cfg.logger.Warn("mqttrpc: accepting a stream failed", "topic", p.Topic, "error", err)
			s.dedup.finishEntry(req.dedupEntry, nil)
			st.drop(true)
			return
		}
	}
	st.unhook = s.conn.addResumable(st)
	err := s.runStreamHandler(withCall(ctx, call), req.method, st)
	st.end(err)
}

// ping is the keepalive: a credit message that repeats the credit granted.
func (st *serverStream) ping() {
	var credit int64
	if st.recv != nil {
		credit = st.recv.credit()
	}
	if err := st.s.publish(st.ctx, st.env.message(st.expiry(), keepaliveProps(credit, st.received(), st.sentCount.Load(), st.target), nil)); err != nil {
		st.s.cfg.logger.Debug("mqttrpc: a stream keepalive was not published", "topic", st.env.topic, "error", err)
	}
}

func appendMetadata(md Metadata, key string, values []string) Metadata {
	if md == nil {
		md = Metadata{}
	}
	md[key] = append(md[key], values...)
	return md
}

// expiry is the MessageExpiryInterval of a message sent now.
func (st *serverStream) expiry() uint32 {
	return expirySeconds(time.Until(st.req.callerDeadline))
}

// streamMessage routes a client's message (data, half-close, credit) to
// its running or lingering stream, on paho's receive goroutine; it never
// blocks. A message for no such stream is dropped: it is late, or a
// copy.
func (s *Server) streamMessage(p *paho.Publish) {
	props := p.Properties
	if props.ResponseTopic == "" || len(props.CorrelationData) == 0 {
		return
	}
	st := s.runningStream(props)
	if st == nil {
		return
	}
	st.live.heard()
	st.receive(p)
}

// runningStream is the running or lingering stream a client message
// names, or nil.
func (s *Server) runningStream(props *paho.PublishProperties) *serverStream {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	return s.streams[dedupKey(props.ResponseTopic, props.CorrelationData)]
}

// streamChunk files a chunk of a client message with its running stream,
// on paho's receive goroutine; the message goes on once complete. A chunk
// for no running stream is dropped, as its message would be.
func (s *Server) streamChunk(p *paho.Publish, h chunkHeader) {
	props := p.Properties
	if props.ResponseTopic == "" || len(props.CorrelationData) == 0 {
		return
	}
	st := s.runningStream(props)
	if st == nil {
		return
	}
	st.live.heard()
	if st.recv == nil || !st.recv.admits(h.seq) {
		return // a server stream's client sends no data; or a copy
	}
	st.recv.progress(h.seq)
	st.chunked.Store(true)
	key := chunkKey{call: dedupKey(props.ResponseTopic, props.CorrelationData), seq: h.seq}
	switch res := s.chunks.add(key, p, h, time.Now(), st.req.callerDeadline, false); res.outcome {
	case chunkComplete:
		st.receive(res.message)
	case chunkRefused:
		st.recv.fail(res.err) // the handler's Recv returns it
	}
}

// receive takes a client message (data, half-close, credit) of the
// stream.
func (st *serverStream) receive(p *paho.Publish) {
	sp := readStreamProps(p)
	if sp.credit >= 0 {
		st.credit.grant(sp.credit)
	}
	if sp.ack >= 0 {
		st.out.ack(sp.ack)
	}
	st.mu.Lock()
	lingering, finalSeq, timer := st.lingering, st.finalSeq, st.lingerTimer
	st.mu.Unlock()
	from := max(sp.ack, 0) // absent: the caller has nothing
	switch {
	case lingering && sp.ack > finalSeq:
		// The caller has the end: the stream goes now, on the timer's
		// goroutine (this one must not wait for its publishes).
		timer.Reset(0)
		return
	case sp.resume:
		// The caller reconnected: it missed what we sent meanwhile, and
		// our credit.
		st.spawn(func() {
			st.resend(st.env.message(st.expiry(), creditProps(st.grantedCredit(), st.received(), st.target), nil), from)
		})
	case lingering && sp.sent >= 0:
		// A keepalive of a caller that still lacks the end: the broker
		// lost it, or what comes before it.
		st.spawn(func() { st.resend(nil, from) })
	}
	if lingering {
		return // the handler is over
	}
	if st.recv != nil {
		if sp.sent >= 0 {
			st.recv.noteSent(sp.sent)
		}
		if sp.seq >= 0 {
			st.recv.push(sp.seq, p, sp.end)
		}
	}
}

// Call implements StreamingHandlerConn.
func (st *serverStream) Call() *Call { return st.call }

// ResponseTrailer implements StreamingHandlerConn.
func (st *serverStream) ResponseTrailer() Metadata {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.trailers == nil {
		st.trailers = Metadata{}
	}
	return st.trailers
}

// contextError is what Send and Receive return once the handler's
// context has ended.
func (st *serverStream) contextError() error {
	if cause := context.Cause(st.ctx); cause != nil && !errors.Is(cause, st.ctx.Err()) {
		return cause // the caller went silent
	}
	return contextError(st.ctx.Err(), "the stream ran")
}

// Send implements StreamingHandlerConn.
func (st *serverStream) Send(msg any) error {
	if st.ctx.Err() != nil {
		return st.contextError()
	}
	if err := st.credit.wait(st.ctx, st.sendSeq); err != nil {
		return st.contextError()
	}
	payload, err := st.s.marshal(st.codec, msg)
	if err != nil {
		return Errorf(Internal, "encoding a stream message: %v", err)
	}
	if len(payload) > st.s.cfg.maxPayload {
		return Errorf(ResourceExhausted, "stream message of %d bytes exceeds the server's limit of %d", len(payload), st.s.cfg.maxPayload)
	}
	var user paho.UserProperties
	if !st.headersSent {
		headers, err := responseMetadata(st.call.respMeta)
		if err != nil {
			return err
		}
		user = dataProps(st.sendSeq, 1+len(headers))
		if st.target != "" {
			user = append(user, paho.UserProperty{Key: propTarget, Value: st.target})
		}
		for _, u := range headers {
			user = append(user, paho.UserProperty{Key: u.key, Value: u.value})
		}
		st.headersSent = true
	} else {
		user = dataProps(st.sendSeq, 0)
	}
	p := st.env.message(st.expiry(), user, payload)
	if limit := st.s.conn.packetLimit(); !fits(p, limit) {
		return st.sendChunks(p, limit)
	}
	st.out.add(st.sendSeq, p)
	st.sendSeq++
	st.sentCount.Store(st.sendSeq)
	return st.publishAsync(p)
}

// sendChunks sends data message p, which does not fit limit, in chunks
// (docs/protocol.md, "Chunking"); it counts as sent once every chunk is
// on its way. It is kept whole for resending, and split again then by
// the limit of that time (docs/protocol.md, "Resuming a stream").
func (st *serverStream) sendChunks(p *paho.Publish, limit int) error {
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

// publishAsync publishes p on a goroutine of the stream, at most
// maxInflightPublishes at once.
func (st *serverStream) publishAsync(p *paho.Publish) error {
	select {
	case st.slots <- struct{}{}:
	case <-st.ctx.Done():
		return st.contextError()
	}
	st.mu.Lock()
	if st.ended || st.handlerDone || st.sendErr != nil {
		err := st.sendErr
		st.mu.Unlock()
		<-st.slots
		if err == nil {
			err = Errorf(FailedPrecondition, "the stream's handler returned")
		}
		return err
	}
	st.hpubs.Add(1)
	st.mu.Unlock()
	st.live.sent()
	go func() {
		defer st.hpubs.Done()
		// Under the stream's context, not the handler's: what is on its
		// way when the handler returns still goes out.
		err := st.s.publish(st.pctx, p)
		<-st.slots
		// Unavailable (our connection is down, or the caller's response
		// topic has no subscriber while it reconnects): the message stays
		// in the replay buffer for when either side resumes.
		if err != nil && st.pctx.Err() == nil && CodeOf(err) != Unavailable {
			st.mu.Lock()
			if st.sendErr == nil {
				st.sendErr = Errorf(CodeOf(err), "a stream message was not published: %s", asError(err).Message())
			}
			st.mu.Unlock()
		}
	}()
	return nil
}

// Receive implements StreamingHandlerConn.
func (st *serverStream) Receive(msg any) error {
	if !st.desc.ClientStreams {
		// The open carried the one request.
		if st.openRead {
			return io.EOF
		}
		st.openRead = true
		if err := st.codec.Unmarshal(st.req.publish.Payload, msg); err != nil {
			st.s.count(DropBadPayload, st.req.publish.Topic)
			return Errorf(InvalidArgument, "request payload does not decode as %s (%s): %v", st.desc.StreamName, st.codec.ContentType(), err)
		}
		return nil
	}
	p, end, grant, err := st.recv.pop(st.ctx)
	if err != nil {
		if st.ctx.Err() != nil {
			return st.contextError()
		}
		return err
	}
	if end {
		return io.EOF
	}
	if grant > 0 {
		if err := st.publishAsync(st.env.message(st.expiry(), creditProps(grant, st.recv.received(), ""), nil)); err != nil {
			return err
		}
	}
	return decodePayload(st.codec, p, msg, st.s.cfg.maxPayload)
}

// serverStreamView is the ServerStream a handler gets, over the conn that
// the interceptors pass it.
type serverStreamView struct {
	ctx  context.Context
	conn StreamingHandlerConn
}

func (v *serverStreamView) Context() context.Context { return v.ctx }

func (v *serverStreamView) SetHeader(md Metadata) {
	h := v.conn.Call().ResponseMetadata()
	for k, vs := range md {
		h[k] = append(h[k], vs...)
	}
}

func (v *serverStreamView) SetTrailer(md Metadata) {
	t := v.conn.ResponseTrailer()
	for k, vs := range md {
		t[k] = append(t[k], vs...)
	}
}

func (v *serverStreamView) SendMsg(m any) error { return v.conn.Send(m) }
func (v *serverStreamView) RecvMsg(m any) error { return v.conn.Receive(m) }
