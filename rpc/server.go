package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"reflect"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/codec"
)

// maxCorrelationData bounds the CorrelationData a server echoes. Our
// clients send 16 bytes; foreign clients often send a UUID string.
const maxCorrelationData = 256

// Server serves registered services to callers through the broker. Requests
// are taken off paho's receive goroutine into a bounded pool of handler
// goroutines; the handler runs under the request's deadline and its answer
// is published to the request's ResponseTopic.
type Server struct {
	conn     *Conn
	cfg      serverConfig
	codecs   *codec.Registry
	stats    serverCounters
	baseCtx  context.Context // parent of handler contexts; cancelled when Shutdown gives up
	stopAll  context.CancelFunc
	rejectCh chan struct{} // bounds goroutines that answer rejected requests
	dedup    *dedupCache
	// publish sends a PUBLISH; conn.publish except in tests that run the
	// request path without a broker.
	publish func(context.Context, *paho.Publish) error

	mu          sync.Mutex
	services    []*service
	started     bool
	stopping    bool
	removeRoute func()
	running     int            // handler goroutines
	queued      int            // requests waiting in the methods' queues
	ready       []*method      // methods with queued requests, served round robin
	nextReady   int            // round-robin position in ready
	workers     sync.WaitGroup // handler goroutines; Add only while !stopping
	closed      bool           // no more rejections either
	rejecters   sync.WaitGroup // Add only while !closed
}

type serverConfig struct {
	serverID            string
	shareGroup          string
	gateway             bool
	noBroadcast         bool
	concurrency         int
	queueSize           int
	methodConcurrency   int
	defaultTimeout      time.Duration
	maxTimeout          time.Duration
	responseTopicPolicy func(string) bool
	codecs              []codec.Codec
	interceptors        []Interceptor
	logger              *slog.Logger
	dedupEntries        int
	dedupBytes          int
	dropHook            func(DropReason, string)
	maxPayload          int
}

type serviceConfig struct {
	tokens map[string]string
}

type service struct {
	desc      *ServiceDesc
	impl      any
	tokens    map[string]string
	methods   map[string]*method
	templates []*TopicTemplate // distinct templates of the methods
	filters   []string         // subscription filters
}

type method struct {
	desc     *MethodDesc
	template *TopicTemplate
	call     UnaryFunc // handler wrapped in the server's interceptors

	// Guarded by Server.mu.
	running int        // handlers of this method running
	queue   []*request // waiting requests, FIFO
}

// request is one received PUBLISH on its way to a handler.
type request struct {
	svc      *service
	method   *method // nil for an unknown method
	values   topicValues
	publish  *paho.Publish
	deadline time.Time
	dedupKey string // "" when the request has no CorrelationData
	ack      func() // acknowledges the request to the broker
	call     Call   // the handler's Call, in the request's allocation
}

// NewServer returns a Server on conn. Register services, then Start it.
func NewServer(conn *Conn, opts ...ServerOption) *Server {
	cfg := serverConfig{
		concurrency:         64,
		queueSize:           256,
		defaultTimeout:      defaultTimeout,
		maxTimeout:          5 * time.Minute,
		responseTopicPolicy: ResponseTopicFilter(DefaultResponsePrefix + "+"),
		logger:              conn.logger,
		maxPayload:          defaultMaxPayload,
		dedupEntries:        10000,
		dedupBytes:          16 << 20,
	}
	for _, o := range opts {
		o.applyToServer(&cfg)
	}
	s := &Server{
		conn:     conn,
		cfg:      cfg,
		codecs:   codec.NewRegistry(cfg.codecs...),
		rejectCh: make(chan struct{}, 16),
		dedup:    newDedupCache(cfg.dedupEntries, cfg.dedupBytes),
		publish:  conn.publish,
	}
	s.baseCtx, s.stopAll = context.WithCancel(context.Background())
	return s
}

// RegisterService registers an implementation of a service. It panics on
// programmer errors, as grpc-go does: registering after Start, registering a
// service twice, an implementation that does not satisfy desc.HandlerType, a
// bad topic template.
func (s *Server) RegisterService(desc *ServiceDesc, impl any, opts ...ServiceOption) {
	if desc.HandlerType != nil {
		ht := reflect.TypeOf(desc.HandlerType).Elem()
		if it := reflect.TypeOf(impl); it == nil || !it.Implements(ht) {
			panic(fmt.Sprintf("rpc: RegisterService: %T does not implement %v", impl, ht))
		}
	}
	var sc serviceConfig
	for _, o := range opts {
		o.applyToService(&sc)
	}
	svc := &service{desc: desc, impl: impl, tokens: sc.tokens, methods: map[string]*method{}}
	for i := range desc.Methods {
		md := &desc.Methods[i]
		tmpl, err := parseTemplateOrDefault(md.TopicTemplate)
		if err != nil {
			panic(fmt.Sprintf("rpc: RegisterService %s: method %s: %v", desc.ServiceName, md.MethodName, err))
		}
		known := false
		for _, t := range svc.templates {
			if t.raw == tmpl.raw {
				tmpl, known = t, true
			}
		}
		if !known {
			svc.templates = append(svc.templates, tmpl)
		}
		impl := impl
		handler := func(ctx context.Context, req any) (any, error) { return md.Handler(impl, ctx, req) }
		svc.methods[md.MethodName] = &method{desc: md, template: tmpl, call: chainInterceptors(handler, s.cfg.interceptors)}
	}
	for name, value := range sc.tokens {
		if err := checkTokenValue(name, value); err != nil {
			panic(fmt.Sprintf("rpc: RegisterService %s: %v", desc.ServiceName, err))
		}
	}
	for _, t := range svc.templates {
		svc.filters = append(svc.filters, s.filtersFor(svc, t)...)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		panic("rpc: RegisterService " + desc.ServiceName + " after Start")
	}
	for _, other := range s.services {
		if other.desc.ServiceName == desc.ServiceName {
			panic("rpc: service " + desc.ServiceName + " registered twice")
		}
	}
	s.services = append(s.services, svc)
}

// filtersFor returns the subscription filters of one template of a service.
func (s *Server) filtersFor(svc *service, t *TopicTemplate) []string {
	v := topicValues{service: svc.desc.ServiceName, custom: svc.tokens}
	var filters []string
	add := func(target string) {
		v.target = target
		filters = append(filters, t.filter(&v))
	}
	switch {
	case s.cfg.gateway:
		add("")
	case s.cfg.serverID != "":
		add(s.cfg.serverID)
		if !s.cfg.noBroadcast {
			add(TargetAll)
		}
	}
	if s.cfg.shareGroup != "" {
		v.target = TargetAny
		filters = append(filters, "$share/"+s.cfg.shareGroup+"/"+t.filter(&v))
	}
	return filters
}

// Start validates the configuration, subscribes to the services' topics and
// begins serving. It waits for the subscriptions to be acknowledged (bounded
// by ctx); they are restored after every reconnect.
func (s *Server) Start(ctx context.Context) error {
	if s.cfg.serverID == "" && s.cfg.shareGroup == "" && !s.cfg.gateway {
		return Errorf(InvalidArgument, "server has neither an ID (WithServerID), a share group (WithShareGroup) nor gateway mode (WithGateway): it would receive nothing")
	}
	if s.cfg.serverID != "" {
		if err := checkID("server ID", s.cfg.serverID); err != nil {
			return err
		}
	}
	if s.cfg.shareGroup != "" {
		if err := checkTokenValue("share group", s.cfg.shareGroup); err != nil {
			return err
		}
	}
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return Errorf(FailedPrecondition, "server already started")
	}
	if len(s.services) == 0 {
		s.mu.Unlock()
		return Errorf(FailedPrecondition, "no service registered")
	}
	s.started = true
	var subs []paho.SubscribeOptions
	seen := map[string]string{}
	for _, svc := range s.services {
		for _, f := range svc.filters {
			if other, dup := seen[f]; dup {
				s.mu.Unlock()
				return Errorf(InvalidArgument, "services %s and %s subscribe to the same filter %q: give one a distinct topic template", other, svc.desc.ServiceName, f)
			}
			seen[f] = svc.desc.ServiceName
			subs = append(subs, paho.SubscribeOptions{Topic: f, QoS: 2})
		}
	}
	s.mu.Unlock()
	// Outside s.mu: requests that arrived before Start are handed over now.
	remove := s.conn.addListener(s.handlePublish)
	s.mu.Lock()
	s.removeRoute = remove
	s.mu.Unlock()
	if err := s.conn.waitReady(ctx); err != nil && CodeOf(err) != Unavailable {
		return err
	}
	for start := 0; start < len(subs); start += maxFiltersPerSubscribe {
		if err := s.conn.subscribe(ctx, subs[start:min(start+maxFiltersPerSubscribe, len(subs))]); err != nil {
			if CodeOf(err) == Unavailable {
				// Recorded: subscribed as soon as the connection is up.
				s.cfg.logger.Warn("mqttrpc: server started while disconnected; subscribing at the next connection", "error", err)
				continue
			}
			s.removeRoute()
			s.conn.forget(subs)
			return err
		}
	}
	return nil
}

// Shutdown stops taking calls, unsubscribes, and waits for running handlers
// to finish. Requests that arrive meanwhile are answered Unavailable, so
// their callers may retry elsewhere. If ctx ends first, the remaining
// handlers' contexts are cancelled and ctx's error is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.stopping || !s.started {
		s.stopping = true
		s.mu.Unlock()
		return nil
	}
	s.stopping = true
	var filters []string
	for _, svc := range s.services {
		filters = append(filters, svc.filters...)
	}
	s.mu.Unlock()

	unsubErr := s.conn.unsubscribe(ctx, filters)
	if unsubErr != nil && s.conn.ctx.Err() == nil {
		s.cfg.logger.Warn("mqttrpc: unsubscribe at shutdown failed", "error", unsubErr)
	}
	done := make(chan struct{})
	go func() {
		s.workers.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		// Handlers that ignore their context finish on their own.
		err = ctx.Err()
	}
	s.stopAll()
	s.mu.Lock()
	remove := s.removeRoute
	s.closed = true
	s.mu.Unlock()
	remove()
	s.rejecters.Wait()
	return err
}

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
	if !s.admit(req, arrival) {
		ack()
	}
	return true
}

// admit decides what happens to a claimed request. It returns true when the
// request was handed to a handler goroutine, which acknowledges it when done.
func (s *Server) admit(req *request, arrival time.Time) bool {
	p := req.publish
	props := p.Properties
	if props == nil || props.ResponseTopic == "" {
		s.drop(DropNoResponseTopic, p.Topic, "request has no ResponseTopic")
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
	var ok bool
	req.deadline, ok = s.deadline(arrival, props)
	if !ok {
		s.drop(DropExpired, p.Topic, "request expired before it arrived")
		return false
	}
	if len(props.CorrelationData) > 0 {
		req.dedupKey = dedupKey(props.ResponseTopic, props.CorrelationData)
		state, cached := s.dedup.begin(req.dedupKey, req.deadline, arrival)
		switch state {
		case dedupRunning:
			// The original's answer goes to the same topic with the same
			// correlation data: it answers this copy too.
			s.count(DropDuplicate, p.Topic)
			return false
		case dedupDone:
			s.count(DropDuplicate, p.Topic)
			if cached != nil {
				s.mu.Lock()
				s.answerAsync(req, func(ctx context.Context) { s.publishResponse(ctx, cached, req.deadline) })
				s.mu.Unlock()
			}
			return false
		}
	}

	req.method = req.svc.methods[req.values.method]
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case len(p.Payload) > s.cfg.maxPayload:
		s.reject(req, DropTooLarge, Errorf(ResourceExhausted, "request of %d bytes exceeds the server's limit of %d", len(p.Payload), s.cfg.maxPayload))
		return false
	case s.stopping:
		s.reject(req, DropShuttingDown, Errorf(Unavailable, "server is shutting down"))
		return false
	case req.method == nil:
		// Answered at once: it needs no handler, and must not wait behind
		// the queue.
		if !s.answerAsync(req, func(ctx context.Context) { s.serve(req) }) {
			s.dedup.forget(req.dedupKey)
			return false
		}
	case s.running < s.cfg.concurrency && req.method.running < s.methodLimit():
		s.running++
		req.method.running++
		s.workers.Add(1)
		go s.work(req)
	case s.queued < s.cfg.queueSize:
		m := req.method
		if len(m.queue) == 0 {
			s.ready = append(s.ready, m)
		}
		m.queue = append(m.queue, req)
		s.queued++
	default:
		s.reject(req, DropOverload, Errorf(ResourceExhausted, "server overloaded: %d calls running and %d queued", s.cfg.concurrency, s.cfg.queueSize))
		return false
	}
	return true
}

// methodLimit is how many handlers of one method may run at once, so that
// a slow method leaves workers for the others.
func (s *Server) methodLimit() int {
	if s.cfg.methodConcurrency > 0 {
		return s.cfg.methodConcurrency
	}
	return max(1, s.cfg.concurrency-s.cfg.concurrency/4)
}

// deadline computes arrival + min(mqttrpc-timeout, MessageExpiryInterval),
// capped by the server's maximum. ok is false for a request that has
// already expired.
func (s *Server) deadline(arrival time.Time, props *paho.PublishProperties) (time.Time, bool) {
	timeout, have := time.Duration(0), false
	if props.MessageExpiry != nil {
		if *props.MessageExpiry == 0 {
			return time.Time{}, false
		}
		timeout, have = time.Duration(*props.MessageExpiry)*time.Second, true
	}
	for _, u := range props.User {
		if u.Key == propTimeout {
			ms, err := strconv.ParseInt(u.Value, 10, 64)
			if err != nil {
				continue // a malformed hint is ignored; the expiry still bounds the call
			}
			if ms <= 0 {
				return time.Time{}, false
			}
			if t := time.Duration(min(ms, int64(math.MaxInt64/time.Millisecond))) * time.Millisecond; !have || t < timeout {
				timeout, have = t, true
			}
			break
		}
	}
	if !have {
		timeout = s.cfg.defaultTimeout
	}
	return arrival.Add(min(timeout, s.cfg.maxTimeout)), true
}

// work runs req, then queued requests, until none may run.
func (s *Server) work(req *request) {
	defer s.workers.Done()
	for req != nil {
		s.serve(req)
		s.mu.Lock()
		req.method.running--
		req = s.nextQueued()
		if req == nil {
			s.running--
		} else {
			req.method.running++
		}
		s.mu.Unlock()
	}
}

// nextQueued takes the next request round robin over the methods with
// waiting requests, skipping methods at their limit. s.mu is held.
func (s *Server) nextQueued() *request {
	limit := s.methodLimit()
	for i := range s.ready {
		idx := (s.nextReady + i) % len(s.ready)
		m := s.ready[idx]
		if m.running >= limit {
			continue
		}
		req := m.queue[0]
		m.queue[0] = nil
		m.queue = m.queue[1:]
		s.queued--
		if len(m.queue) == 0 {
			m.queue = nil
			s.ready = append(s.ready[:idx], s.ready[idx+1:]...)
			s.nextReady = idx
		} else {
			s.nextReady = idx + 1
		}
		return req
	}
	return nil
}

// serve decodes, runs the handler and publishes the answer.
func (s *Server) serve(req *request) {
	defer req.ack()
	p := req.publish
	if time.Now().After(req.deadline) {
		s.drop(DropExpired, p.Topic, "request expired while queued")
		if req.dedupKey != "" {
			s.dedup.forget(req.dedupKey)
		}
		return
	}
	ctx, cancel := context.WithDeadline(s.baseCtx, req.deadline)
	defer cancel()
	call := &req.call
	*call = Call{
		service:  req.svc.desc.ServiceName,
		method:   req.values.method,
		target:   req.values.target,
		tokens:   req.values.custom,
		topic:    p.Topic,
		isClient: false,
	}
	version := protocolVersion
	for _, u := range p.Properties.User {
		switch {
		case u.Key == propVersion:
			version = u.Value
		case !isReservedKey(u.Key):
			call.RequestMetadata().Add(u.Key, u.Value)
		}
	}
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
	if m == nil || !m.template.match(p.Topic, call.service, &topicValues{}) {
		s.respond(ctx, req, call, cd, nil, Errorf(Unimplemented, "method %s not implemented by service %s", req.values.method, call.service))
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

// runHandler calls the handler and turns a panic into Internal.
func (s *Server) runHandler(ctx context.Context, m *method, msg any) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.cfg.logger.Error("mqttrpc: handler panicked", "method", m.desc.MethodName, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			resp, err = nil, Errorf(Internal, "handler panicked")
		}
	}()
	return m.call(ctx, msg)
}

// reject answers a request that will not be served. s.mu is held.
func (s *Server) reject(req *request, reason DropReason, err *Error) {
	s.count(reason, req.publish.Topic)
	if req.dedupKey != "" {
		s.dedup.forget(req.dedupKey) // not executed: a retry deserves its chance
		unkept := *req
		unkept.dedupKey = ""
		req = &unkept
	}
	s.answerAsync(req, func(ctx context.Context) {
		call := &Call{service: req.svc.desc.ServiceName, method: req.values.method, target: req.values.target, topic: req.publish.Topic}
		cd, ok := s.codecs.Lookup(req.publish.Properties.ContentType)
		if !ok {
			cd = codec.Proto
		}
		s.respond(ctx, req, call, cd, nil, err)
	})
}

// answerAsync publishes an answer without blocking the receive goroutine;
// when too many answers are already on their way the request is dropped
// unanswered. s.mu is held.
func (s *Server) answerAsync(req *request, answer func(ctx context.Context)) bool {
	if s.closed {
		return false
	}
	select {
	case s.rejectCh <- struct{}{}:
	default:
		s.cfg.logger.Warn("mqttrpc: request dropped unanswered", "topic", req.publish.Topic, "detail", "too many early answers in flight")
		return false
	}
	s.rejecters.Add(1)
	go func() {
		defer s.rejecters.Done()
		defer func() { <-s.rejectCh }()
		ctx, cancel := context.WithDeadline(s.baseCtx, req.deadline)
		defer cancel()
		answer(ctx)
	}()
	return true
}

// respond publishes the answer: the response message on success, the code
// and message on error. The answer is kept for duplicates of the request.
func (s *Server) respond(ctx context.Context, req *request, call *Call, cd codec.Codec, resp any, handlerErr error) {
	p := req.publish
	cr := s.buildResponse(req, call, cd, resp, handlerErr)
	if req.dedupKey != "" {
		s.dedup.finish(req.dedupKey, cr)
	}
	if time.Until(req.deadline) <= 0 {
		s.drop(DropExpired, p.Topic, "the call's deadline passed before the answer was ready")
		return
	}
	if err := s.publishResponse(ctx, cr, req.deadline); err != nil {
		s.count(DropResponseFailed, p.Topic)
		s.cfg.logger.Warn("mqttrpc: publishing the response failed", "topic", p.Topic, "response_topic", cr.topic, "error", err)
		return
	}
	s.stats.add(statServed)
}

// buildResponse encodes an answer.
func (s *Server) buildResponse(req *request, call *Call, cd codec.Codec, resp any, handlerErr error) *cachedResponse {
	p := req.publish
	var payload []byte
	if handlerErr == nil {
		var err error
		if payload, err = cd.Marshal(resp); err != nil {
			handlerErr = Errorf(Internal, "encoding the response: %v", err)
		} else if len(payload) > s.cfg.maxPayload {
			handlerErr = Errorf(ResourceExhausted, "response of %d bytes exceeds the server's limit of %d", len(payload), s.cfg.maxPayload)
		}
	}
	// mqttrpc-target tells the caller who answered when it could not know:
	// a broadcast or an anycast. A unicast caller named the target itself.
	target := req.values.target
	withTarget := (target == TargetAll || target == TargetAny) && s.cfg.serverID != ""
	// An OK answer carries no mqttrpc-status: absent means 0 (protocol.md,
	// "Defaults stay off the wire").
	var user []userProperty
	if n := len(call.respMeta); handlerErr != nil || withTarget || n > 0 {
		user = make([]userProperty, 0, 3+n)
	}
	if withTarget {
		user = append(user, userProperty{propTarget, s.cfg.serverID})
	}
	if handlerErr != nil {
		rpcErr := asError(handlerErr)
		user = append(user,
			userProperty{propStatus, strconv.FormatUint(uint64(rpcErr.Code()), 10)},
			userProperty{propMessage, rpcErr.Message()})
		for k, vs := range rpcErr.meta {
			call.ResponseMetadata()[k] = append(call.ResponseMetadata()[k], vs...)
		}
		payload = nil
	}
	for k, vs := range call.respMeta {
		if isReservedKey(k) {
			continue
		}
		for _, v := range vs {
			user = append(user, userProperty{k, v})
		}
	}
	return &cachedResponse{
		qos:   p.QoS,
		topic: p.Properties.ResponseTopic,
		properties: responseProperties{
			correlationData: p.Properties.CorrelationData,
			contentType:     responseContentType(cd),
			user:            user,
		},
		payload: payload,
	}
}

// responseContentType is the ContentType of an answer encoded with cd:
// none for protobuf, which is what an absent ContentType means.
func responseContentType(cd codec.Codec) string {
	if ct := cd.ContentType(); ct != codec.ContentTypeProto {
		return ct
	}
	return ""
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
		err := s.publish(ctx, &out.publish)
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

// outgoingResponse holds a response PUBLISH and its parts.
type outgoingResponse struct {
	publish paho.Publish
	props   paho.PublishProperties
	user    [3]paho.UserProperty // mqttrpc-target, mqttrpc-status, mqttrpc-message
	expiry  uint32
}

// count records a dropped or rejected request in Stats and tells the drop
// hook.
func (s *Server) count(reason DropReason, topic string) {
	s.stats.add(reason)
	if s.cfg.dropHook != nil {
		s.cfg.dropHook(reason, topic)
	}
}

func (s *Server) drop(reason DropReason, topic, detail string) {
	s.count(reason, topic)
	s.cfg.logger.Warn("mqttrpc: request dropped", "reason", reason.String(), "topic", topic, "detail", detail)
}

// ResponseTopicFilter returns a response-topic policy that allows topics
// matching any of the MQTT topic filters (with + and # wildcards).
func ResponseTopicFilter(filters ...string) func(topic string) bool {
	return func(topic string) bool {
		for _, f := range filters {
			if topicMatchesFilter(f, topic) {
				return true
			}
		}
		return false
	}
}

// topicMatchesFilter implements MQTT topic filter matching.
func topicMatchesFilter(filter, topic string) bool {
	for {
		fl, frest, fmore := cut(filter)
		if fl == "#" {
			return true
		}
		tl, trest, tmore := cut(topic)
		if fl != "+" && fl != tl {
			return false
		}
		if !fmore {
			return !tmore
		}
		if !tmore {
			return frest == "#" // "a/#" matches "a"
		}
		filter, topic = frest, trest
	}
}

func cut(s string) (level, rest string, more bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// ServerStats counts what a server did with the requests it received.
type ServerStats struct {
	// Served counts answers published (OK or error).
	Served uint64
	// Dropped counts requests that got no answer or an early rejection, by reason.
	Dropped map[DropReason]uint64
}

// DropReason says why a request was dropped or rejected.
type DropReason int

// The reasons a server drops or rejects a request.
const (
	// DropExpired: the request's deadline passed before it could be answered.
	DropExpired DropReason = iota
	// DropNoResponseTopic: the request had no ResponseTopic to answer on.
	DropNoResponseTopic
	// DropResponseTopicPolicy: the ResponseTopic was outside the server's policy.
	DropResponseTopicPolicy
	// DropBadCorrelationData: the CorrelationData was too long to echo.
	DropBadCorrelationData
	// DropOverload: the server was over its concurrency and queue limits
	// (answered ResourceExhausted when possible).
	DropOverload
	// DropBadPayload: the payload did not decode (answered InvalidArgument).
	DropBadPayload
	// DropResponseFailed: the answer could not be published.
	DropResponseFailed
	// DropShuttingDown: the server was shutting down (answered Unavailable
	// when possible).
	DropShuttingDown
	// DropDuplicate: a duplicate of a request that already ran or is running
	// (QoS 1 redelivery, client retry); it was not executed again, and got
	// the original's answer.
	DropDuplicate
	// DropTooLarge: the request's payload was over the server's limit
	// (answered ResourceExhausted).
	DropTooLarge
	numDropReasons
	statServed = numDropReasons
)

var dropReasonNames = [...]string{"expired", "no_response_topic", "response_topic_policy", "bad_correlation_data", "overload", "bad_payload", "response_failed", "shutting_down", "duplicate", "too_large"}

// String returns the reason as a snake_case word, for logs and metrics.
func (r DropReason) String() string {
	if r >= 0 && r < numDropReasons {
		return dropReasonNames[r]
	}
	return "DropReason(" + strconv.Itoa(int(r)) + ")"
}

type serverCounters struct {
	counts [numDropReasons + 1]atomic.Uint64
}

func (c *serverCounters) add(r DropReason) { c.counts[r].Add(1) }

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() ServerStats {
	st := ServerStats{Served: s.stats.counts[statServed].Load(), Dropped: map[DropReason]uint64{}}
	for r := DropReason(0); r < numDropReasons; r++ {
		if n := s.stats.counts[r].Load(); n > 0 {
			st.Dropped[r] = n
		}
	}
	return st
}
