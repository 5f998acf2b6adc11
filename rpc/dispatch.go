package rpc

// How a Server takes a request from the broker to a handler and its answer
// back: admission, the bounded worker pool and queue, the handler call, and
// publishing the answer.

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/codec"
)

// handlePublish runs on paho's receive goroutine. It claims requests for
// this server's services and never blocks: the work happens in handler
// goroutines.
func (s *Server) handlePublish(p *paho.Publish, ack func()) bool {
	arrival := time.Now()
	req := &request{publish: p, ack: ack}
	for _, svc := range s.services {
		for _, t := range svc.templates {
			if t.match(p.Topic, svc.desc.ServiceName, &req.values) {
				req.svc = svc
				break
			}
			req.values = topicValues{}
		}
		if req.svc != nil {
			break
		}
	}
	if req.svc == nil {
		return false
	}
	if isChunk(p) {
		s.chunk(req, arrival)
		ack()
		return true
	}
	switch classifyRequest(p) {
	case kindCancel:
		s.cancel(p)
		ack()
		return true
	case kindStreamMessage:
		s.streamMessage(p)
		ack()
		return true
	}
	if !s.admit(req, arrival) {
		ack()
	}
	return true
}

// cancel handles a cancel message: the call it names, if it is running or
// queued, ends without an answer.
func (s *Server) cancel(p *paho.Publish) {
	props := p.Properties
	if props.ResponseTopic == "" || len(props.CorrelationData) == 0 {
		return // names no call
	}
	if s.dedup.cancelCall(dedupKey(props.ResponseTopic, props.CorrelationData)) {
		s.count(DropCanceled, p.Topic)
	}
}

// answerable reports whether a request can be answered at all; it drops
// and counts one that cannot.
func (s *Server) answerable(p *paho.Publish) bool {
	props := p.Properties
	if props == nil || props.ResponseTopic == "" {
		s.drop(DropNoResponseTopic, p.Topic, "request has no ResponseTopic")
		return false
	}
	if err := checkResponseTopic(props.ResponseTopic); err != "" {
		// Publishing there would get the server disconnected by the broker.
		s.drop(DropBadResponseTopic, p.Topic, "response topic "+strconv.Quote(props.ResponseTopic)+" "+err)
		return false
	}
	if !s.cfg.responseTopicPolicy(props.ResponseTopic) {
		s.drop(DropResponseTopicPolicy, p.Topic, "response topic "+strconv.Quote(props.ResponseTopic)+" is outside the policy")
		return false
	}
	if len(props.CorrelationData) > maxCorrelationData {
		s.drop(DropBadCorrelationData, p.Topic, "correlation data longer than "+strconv.Itoa(maxCorrelationData)+" bytes")
		return false
	}
	return true
}

// admit decides what happens to a claimed request. It returns true when the
// request was handed to a handler goroutine, which acknowledges it when done.
func (s *Server) admit(req *request, arrival time.Time) bool {
	p := req.publish
	props := p.Properties
	if !s.answerable(p) {
		return false
	}
	var ok bool
	req.deadline, req.callerDeadline, ok = s.deadline(arrival, props)
	if !ok {
		s.drop(DropExpired, p.Topic, "request expired before it arrived")
		return false
	}
	if key, fresh := requestDedupKey(p); key != "" {
		state, cached, entry := s.dedup.start(key, req.callerDeadline, arrival, fresh)
		req.dedupEntry = entry
		switch state {
		case dedupRunning:
			// The original's answer goes to the same topic with the same
			// correlation data: it answers this copy too.
			s.count(DropDuplicate, p.Topic)
			return false
		case dedupDone:
			s.count(DropDuplicate, p.Topic)
			if cached != nil {
				s.answerEarly(req, func(ctx context.Context) { s.publishResponse(ctx, cached, req.callerDeadline) })
			}
			return false
		}
	}

	req.method = req.svc.methods[req.values.method]
	var (
		rejectReason DropReason
		rejectErr    *Error
	)
	s.mu.Lock()
	switch {
	case len(p.Payload) > s.cfg.maxPayload:
		rejectReason, rejectErr = DropTooLarge, Errorf(ResourceExhausted, "request of %d bytes exceeds the server's limit of %d", len(p.Payload), s.cfg.maxPayload)
	case s.stopping:
		rejectReason, rejectErr = DropShuttingDown, Errorf(Unavailable, "server is shutting down")
	case req.method == nil:
		s.mu.Unlock()
		// Answered at once: it needs no handler, and must not wait behind
		// the queue. serve acknowledges it.
		if !s.answerEarly(req, func(ctx context.Context) { s.serve(req) }) {
			s.dedup.forget(req.dedupEntry)
			return false
		}
		return true
	case s.running < s.cfg.concurrency && req.method.running < s.methodLimit():
		s.running++
		req.method.running++
		if s.parked > 0 {
			// Never blocks: the channel has room for every parked
			// worker, and each takes one request.
			s.parked--
			s.handoff <- req
		} else {
			s.workers.Add(1)
			go s.work(req)
		}
	case s.queued < s.cfg.queueSize:
		m := req.method
		if len(m.queue) == 0 {
			s.ready = append(s.ready, m)
		}
		m.queue = append(m.queue, req)
		s.queued++
	default:
		rejectReason, rejectErr = DropOverload, Errorf(ResourceExhausted, "server overloaded: %d calls running and %d queued", s.cfg.concurrency, s.cfg.queueSize)
	}
	s.mu.Unlock()
	if rejectErr != nil {
		s.reject(req, rejectReason, rejectErr)
		return false
	}
	return true
}

// chunk takes a chunk of a request, or of a stream's client message
// (docs/protocol.md, "Reassembly"). A request goes on to admission once it
// is complete, as if it had arrived whole when its chunk 0 did; one whose
// chunks are refused is answered at once.
func (s *Server) chunk(req *request, arrival time.Time) {
	p := req.publish
	h := readChunk(p)
	if h.seq >= 0 {
		s.streamChunk(p, h)
		return
	}
	if !s.answerable(p) {
		return
	}
	var ok bool
	req.deadline, req.callerDeadline, ok = s.deadline(arrival, p.Properties)
	if !ok {
		s.drop(DropExpired, p.Topic, "a chunk of a request expired before it arrived")
		return
	}
	if len(p.Properties.CorrelationData) == 0 {
		req.publish = unchunked(p)
		s.reject(req, DropBadChunk, Errorf(InvalidArgument, "a chunk needs CorrelationData: it names the message the chunk belongs to"))
		return
	}
	key := chunkKey{call: dedupKey(p.Properties.ResponseTopic, p.Properties.CorrelationData), seq: -1}
	res := s.chunks.add(key, p, h, arrival, req.callerDeadline, true)
	switch res.outcome {
	case chunkComplete:
		s.admit(&request{svc: req.svc, values: req.values, publish: res.message, ack: noAck}, res.arrival)
	case chunkRefused:
		req.publish = unchunked(p)
		s.reject(req, res.reason, res.err)
	}
}

// unchunked is a chunk with the ContentType of its message, to answer it
// in the message's codec.
func unchunked(p *paho.Publish) *paho.Publish {
	c := *p
	props := *p.Properties
	props.ContentType, _ = messageContentType(props.ContentType)
	c.Properties = &props
	return &c
}

// serve decodes, runs the handler and publishes the answer.
func (s *Server) serve(req *request) {
	defer req.ack()
	p := req.publish
	if !time.Now().Before(req.deadline) {
		if req.deadline.Before(req.callerDeadline) {
			s.respond(context.Background(), req, &Call{service: req.svc.desc.ServiceName, method: req.values.method, target: req.values.target, topic: p.Topic}, s.requestCodec(p), nil, s.capExceeded())
			return
		}
		s.drop(DropExpired, p.Topic, "request expired while queued")
		s.dedup.forget(req.dedupEntry)
		return
	}
	ctx, cancel := context.WithDeadline(s.baseCtx, req.deadline)
	defer cancel()
	if !s.dedup.attachCancel(req.dedupEntry, cancel) {
		// Canceled while queued: it does not run.
		s.dedup.finishEntry(req.dedupEntry, nil)
		return
	}
	if req.deadline.Before(req.callerDeadline) {
		// The server's cap comes first: tell the caller when it passes,
		// even if the handler ignores its context.
		fired := make(chan struct{})
		timer := time.AfterFunc(time.Until(req.deadline), func() {
			defer close(fired)
			s.respond(context.Background(), req, &Call{service: req.svc.desc.ServiceName, method: req.values.method, target: req.values.target, topic: p.Topic}, s.requestCodec(p), nil, s.capExceeded())
		})
		defer func() {
			if !timer.Stop() {
				<-fired
			}
		}()
	}
	call := &req.call
	*call = Call{
		service:  req.svc.desc.ServiceName,
		method:   req.values.method,
		target:   req.values.target,
		tokens:   req.values.custom,
		topic:    p.Topic,
		isClient: false,
	}
	version := readRequestProperties(p, call)
	cd, known := s.codecs.Lookup(p.Properties.ContentType)
	if !known {
		s.respond(ctx, req, call, codec.Proto, nil, Errorf(InvalidArgument, "unknown content type %q: send %s or %s", p.Properties.ContentType, codec.ContentTypeProto, codec.ContentTypeJSON))
		return
	}
	call.codecName = cd.Name()
	if version != protocolVersion {
		s.respond(ctx, req, call, cd, nil, Errorf(Unimplemented, "protocol version %q is not supported; this server speaks mqttrpc version %s", version, protocolVersion))
		return
	}
	m := req.method
	if m == nil && req.values.method == StatsMethod {
		s.respond(ctx, req, call, cd, s.statsMessage(req.svc), nil) // method_stats.go
		return
	}
	if m == nil || !m.template.match(p.Topic, call.service, &topicValues{}) {
		s.respond(ctx, req, call, cd, nil, Errorf(Unimplemented, "method %s not implemented by service %s", req.values.method, call.service))
		return
	}
	if m.stream != nil {
		s.serveStream(ctx, req, call, cd)
		return
	}
	call.idempotency = m.desc.Idempotency
	msg := m.desc.NewRequest()
	if err := cd.Unmarshal(p.Payload, msg); err != nil {
		s.count(DropBadPayload, p.Topic)
		s.respond(ctx, req, call, cd, nil, Errorf(InvalidArgument, "request payload does not decode as %s (%s): %v", m.desc.MethodName, cd.ContentType(), err))
		return
	}
	resp, err := s.runHandler(withCall(ctx, call), m, msg)
	s.respond(ctx, req, call, cd, resp, err)
}

// runHandler calls the handler and turns a panic into Internal. A typed
// nil *Error is no error; a nil response without an error is Internal, as
// in gRPC: the caller would otherwise read an empty message as a real one.
func (s *Server) runHandler(ctx context.Context, m *method, msg any) (resp any, err error) {
	start := m.stats.begin()
	defer func() { m.stats.end(start, err) }() // after the recover below has set err
	defer func() {
		if r := recover(); r != nil {
			s.cfg.logger.Error("mqttrpc: handler panicked", "method", m.desc.MethodName, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			resp, err = nil, Errorf(Internal, "handler panicked")
		}
	}()
	resp, err = m.call(ctx, msg)
	if isNilError(err) {
		err = nil
	}
	if err == nil && isNilValue(resp) {
		return nil, Errorf(Internal, "handler of %s returned neither a response nor an error", m.desc.MethodName)
	}
	return resp, err
}

// isNilValue reports whether v is nil or a nil pointer, map, slice,
// interface, channel or function in an interface.
func isNilValue(v any) bool {
	if v == nil {
		return true
	}
	switch rv := reflect.ValueOf(v); rv.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Interface, reflect.Chan, reflect.Func:
		return rv.IsNil()
	}
	return false
}

// reject answers a request that will not be served, from the early-answer
// queue. The queued answer keeps no payload: a burst of rejections costs
// little memory.
func (s *Server) reject(req *request, reason DropReason, err *Error) {
	s.count(reason, req.publish.Topic)
	s.dedup.forget(req.dedupEntry) // not executed: a retry deserves its chance
	p := *req.publish
	p.Payload = nil
	rejected := &request{svc: req.svc, values: req.values, publish: &p, deadline: req.deadline, callerDeadline: req.callerDeadline, ack: noAck}
	s.answerEarly(rejected, func(ctx context.Context) {
		call := &Call{service: rejected.svc.desc.ServiceName, method: rejected.values.method, target: rejected.values.target, topic: p.Topic}
		cd, ok := s.codecs.Lookup(p.Properties.ContentType)
		if !ok {
			cd = codec.Proto
		}
		s.respond(ctx, rejected, call, cd, nil, err)
	})
}

// answerEarly queues an answer that needs no handler. When the queue is
// full the request is dropped unanswered, counted and logged.
func (s *Server) answerEarly(req *request, answer func(ctx context.Context)) bool {
	if s.early.add(s.baseCtx, earlyAnswer{deadline: req.callerDeadline, answer: answer}) {
		return true
	}
	s.drop(DropUnanswered, req.publish.Topic, "too many early answers queued")
	return false
}

// requestCodec is the codec of a request's content type, protobuf when it
// is unknown.
func (s *Server) requestCodec(p *paho.Publish) codec.Codec {
	if cd, ok := s.codecs.Lookup(p.Properties.ContentType); ok {
		return cd
	}
	return codec.Proto
}

// capExceeded is the answer when the server's cap on a call's time passes
// before the caller's deadline.
func (s *Server) capExceeded() *Error {
	return Errorf(DeadlineExceeded, "the server's time limit for a call (%v, WithMaxTimeout) passed", s.cfg.maxTimeout)
}

// respond publishes the answer: the response message on success, the code
// and message on error. The answer is kept for duplicates of the request.
// Only the first answer of a request counts; a handler that returns after
// the server's cap has passed finds it answered.
func (s *Server) respond(ctx context.Context, req *request, call *Call, cd codec.Codec, resp any, handlerErr error) {
	if !req.answered.CompareAndSwap(false, true) {
		return
	}
	p := req.publish
	if req.deadline.Before(req.callerDeadline) && !time.Now().Before(req.deadline) {
		// The server gave up on the call: the caller hears it now.
		resp, handlerErr = nil, s.capExceeded()
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(s.baseCtx, req.callerDeadline)
		defer cancel()
	}
	cr := s.buildResponse(req, call, cd, resp, handlerErr)
	if req.dedupEntry != nil && s.dedup.finishEntry(req.dedupEntry, cr) {
		return // the caller canceled: nobody waits for the answer
	}
	if time.Until(req.callerDeadline) <= 0 {
		s.drop(DropExpired, p.Topic, "the call's deadline passed before the answer was ready")
		return
	}
	if err := s.publishResponse(ctx, cr, req.callerDeadline); err != nil {
		s.count(DropResponseFailed, p.Topic)
		s.cfg.logger.Warn("mqttrpc: publishing the response failed", "topic", p.Topic, "response_topic", cr.topic, "error", err)
		return
	}
	s.stats.add(statServed)
}

// marshal encodes a handler's response; a codec that panics on what the
// handler returned is an Internal error, not a crash.
func (s *Server) marshal(cd codec.Codec, resp any) (payload []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			payload, err = nil, fmt.Errorf("codec %s panicked on a %T: %v", cd.Name(), resp, r)
		}
	}()
	return cd.Marshal(resp)
}

// publishResponse publishes an answer with what is left of deadline as its
// expiry.
func (s *Server) publishResponse(ctx context.Context, cr *cachedResponse, deadline time.Time) error {
	left := time.Until(deadline)
	if left <= 0 {
		return nil
	}
	// One allocation for the packet and its parts.
	out := new(outgoingResponse)
	expiry := &out.expiry
	*expiry = expirySeconds(left)
	user := out.user[:0]
	if len(cr.properties.user) > len(out.user) {
		user = make(paho.UserProperties, 0, len(cr.properties.user))
	}
	for _, u := range cr.properties.user {
		user = append(user, paho.UserProperty{Key: u.key, Value: u.value})
	}
	props := &out.props
	*props = paho.PublishProperties{
		CorrelationData: cr.properties.correlationData,
		ContentType:     cr.properties.contentType,
		MessageExpiry:   expiry,
		User:            user,
	}
	if cr.properties.contentType == codec.ContentTypeJSON {
		props.PayloadFormat = &payloadFormatUTF8
	}
	backoff := 20 * time.Millisecond
	for {
		out.publish = paho.Publish{QoS: cr.qos, Topic: cr.topic, Properties: props, Payload: cr.payload}
		err := s.publishAnswer(ctx, &out.publish, cr)
		if err == nil || !errors.Is(err, errTransport) {
			return err
		}
		// The connection failed: the answer is still worth sending once it
		// is back, until the deadline. A copy that arrives twice is
		// ignored by the caller.
		timer := time.NewTimer(backoff)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return err
		}
		backoff = min(2*backoff, time.Second)
		if err := s.conn.AwaitConnection(ctx); err != nil {
			return err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		*expiry = expirySeconds(left)
	}
}

// publishAnswer publishes an answer, in chunks when it does not fit the
// broker's Maximum Packet Size (docs/protocol.md, "Chunking"). An answer
// that cannot go in chunks (its properties alone do not fit, or it
// answers a broadcast from a server without an ID) is replaced by
// ResourceExhausted.
func (s *Server) publishAnswer(ctx context.Context, p *paho.Publish, cr *cachedResponse) error {
	limit := s.conn.packetLimit()
	if fits(p, limit) {
		return s.publish(ctx, p)
	}
	var why *Error
	switch {
	case cr.anonymous:
		why = Errorf(ResourceExhausted, "the answer of %d bytes does not fit the broker's Maximum Packet Size of %d bytes, and a server without an ID cannot answer a broadcast in chunks (they could not be told from other servers' answers)", len(p.Payload), limit)
	case len(p.Payload) == 0:
		why = Errorf(ResourceExhausted, "the answer's status message and metadata do not fit the broker's Maximum Packet Size of %d bytes", limit)
	default:
		chunks, err := splitIntoChunks(p, limit)
		if err == nil {
			return publishChunks(ctx, s.publish, chunks)
		}
		why = Errorf(ResourceExhausted, "the answer does not fit the broker's Maximum Packet Size of %d bytes: %s", limit, err.Message())
	}
	user := paho.UserProperties{
		{Key: propStatus, Value: strconv.FormatUint(uint64(why.Code()), 10)},
		{Key: propMessage, Value: encodeStatusMessage(why.Message())},
	}
	if target := responseTarget(p); target != "" {
		user = append(user, paho.UserProperty{Key: propTarget, Value: target})
	}
	small := &paho.Publish{QoS: p.QoS, Topic: p.Topic, Properties: &paho.PublishProperties{
		CorrelationData: p.Properties.CorrelationData,
		ContentType:     p.Properties.ContentType,
		MessageExpiry:   p.Properties.MessageExpiry,
		User:            user,
	}}
	s.cfg.logger.Warn("mqttrpc: an answer too large for the broker was replaced by ResourceExhausted", "response_topic", p.Topic, "error", why.Message())
	return s.publish(ctx, small)
}
