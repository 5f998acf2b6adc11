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
	"strings"
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
	conn    *Conn
	cfg     serverConfig
	codecs  *codec.Registry
	stats   serverCounters
	baseCtx context.Context // parent of handler contexts; cancelled when Shutdown gives up
	stopAll context.CancelFunc
	early   earlyAnswers // rejections and other answers that need no handler
	dedup   *dedupCache
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
	idle        chan struct{}  // made by Shutdown, closed when no handler runs
	shutDown    bool           // Shutdown finished: the route is removed
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
	errs                []error // options given bad values
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
	svc     *service
	method  *method // nil for an unknown method
	values  topicValues
	publish *paho.Publish
	// deadline is the handler's: the caller's, capped by WithMaxTimeout.
	deadline time.Time
	// callerDeadline is the caller's; it bounds every answer. When the
	// server's cap comes first, the caller is told DeadlineExceeded then.
	callerDeadline time.Time
	dedupEntry     *dedupEntry // nil when the request is not deduplicated
	ack            func()      // acknowledges the request to the broker
	answered       atomic.Bool // an answer (or the decision to send none) was made
	call           Call        // the handler's Call, in the request's allocation
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
		conn:    conn,
		cfg:     cfg,
		codecs:  codec.NewRegistry(cfg.codecs...),
		dedup:   newDedupCache(cfg.dedupEntries, cfg.dedupBytes),
		publish: conn.publish,
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
	if err := checkTokenValue("service name", desc.ServiceName); err != nil {
		panic(fmt.Sprintf("rpc: RegisterService: %v", err))
	}
	for i := range desc.Methods {
		md := &desc.Methods[i]
		if err := checkTokenValue("method name", md.MethodName); err != nil {
			panic(fmt.Sprintf("rpc: RegisterService %s: method %d: %v", desc.ServiceName, i, err))
		}
		if svc.methods[md.MethodName] != nil {
			panic(fmt.Sprintf("rpc: RegisterService %s: method %s declared twice", desc.ServiceName, md.MethodName))
		}
		if md.Handler == nil || md.NewRequest == nil {
			panic(fmt.Sprintf("rpc: RegisterService %s: method %s has no Handler or NewRequest", desc.ServiceName, md.MethodName))
		}
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
	if len(s.cfg.errs) > 0 {
		return s.cfg.errs[0]
	}
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
			s.mu.Lock()
			s.started, s.removeRoute = false, nil // Start may be tried again
			s.mu.Unlock()
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
	if s.shutDown || !s.started {
		s.stopping, s.shutDown = true, true
		s.mu.Unlock()
		return nil
	}
	s.stopping = true
	var filters []string
	for _, svc := range s.services {
		filters = append(filters, svc.filters...)
	}
	idle := s.idle
	if idle == nil {
		idle = make(chan struct{})
		s.idle = idle
		if s.running == 0 {
			close(idle)
		}
	}
	s.mu.Unlock()

	unsubErr := s.conn.unsubscribe(ctx, filters)
	var err error
	select {
	case <-idle:
	case <-ctx.Done():
		// Handlers that ignore their context finish on their own; each
		// still answers or drops its request.
		err = ctx.Err()
	}
	if unsubErr != nil && err == nil && s.conn.ctx.Err() == nil {
		// The broker still delivers requests: keep answering them
		// Unavailable, and let a later Shutdown try again.
		s.cfg.logger.Warn("mqttrpc: unsubscribe at shutdown failed; requests that still arrive are answered Unavailable", "error", unsubErr)
		return NewError(CodeOf(unsubErr), fmt.Errorf("shutdown: the broker still delivers requests, which are answered Unavailable; call Shutdown again to retry: %w", unsubErr))
	}
	s.mu.Lock()
	s.shutDown = true
	remove := s.removeRoute
	s.mu.Unlock()
	s.stopAll()
	remove()
	s.early.close()
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
		rejectReason, rejectErr = DropOverload, Errorf(ResourceExhausted, "server overloaded: %d calls running and %d queued", s.cfg.concurrency, s.cfg.queueSize)
	}
	s.mu.Unlock()
	if rejectErr != nil {
		s.reject(req, rejectReason, rejectErr)
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

// deadline computes the caller's deadline, arrival + min(mqttrpc-timeout,
// MessageExpiryInterval), and the handler's, that capped by the server's
// maximum. ok is false for a request that has already expired.
func (s *Server) deadline(arrival time.Time, props *paho.PublishProperties) (handler, caller time.Time, ok bool) {
	timeout, have := time.Duration(0), false
	if props.MessageExpiry != nil {
		if *props.MessageExpiry == 0 {
			return time.Time{}, time.Time{}, false
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
				return time.Time{}, time.Time{}, false
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
	caller = arrival.Add(timeout)
	return arrival.Add(min(timeout, s.cfg.maxTimeout)), caller, true
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
			if s.running == 0 && s.idle != nil {
				close(s.idle)
			}
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
	version := protocolVersion
	for _, u := range p.Properties.User {
		switch {
		case u.Key == propVersion:
			version = u.Value
		case !isReservedKey(u.Key):
			call.RequestMetadata().Add(u.Key, decodeMetadataValue(u.Key, u.Value))
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

// runHandler calls the handler and turns a panic into Internal. A typed
// nil *Error is no error; a nil response without an error is Internal, as
// in gRPC: the caller would otherwise read an empty message as a real one.
func (s *Server) runHandler(ctx context.Context, m *method, msg any) (resp any, err error) {
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
	if req.dedupEntry != nil {
		s.dedup.finishEntry(req.dedupEntry, cr)
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

// buildResponse encodes an answer.
func (s *Server) buildResponse(req *request, call *Call, cd codec.Codec, resp any, handlerErr error) *cachedResponse {
	p := req.publish
	var payload []byte
	if isNilError(handlerErr) {
		handlerErr = nil
	}
	if handlerErr == nil {
		var err error
		if payload, err = s.marshal(cd, resp); err != nil {
			handlerErr = Errorf(Internal, "encoding the response: %v", err)
		} else if len(payload) > s.cfg.maxPayload {
			handlerErr = Errorf(ResourceExhausted, "response of %d bytes exceeds the server's limit of %d", len(payload), s.cfg.maxPayload)
		}
	}
	var rpcErr *Error
	if handlerErr != nil {
		rpcErr = asError(handlerErr)
		if rpcErr.Code() == OK {
			// An error that says OK would read as an empty success.
			rpcErr = Errorf(Unknown, "handler returned an error with code OK: %s", rpcErr.Message())
		}
		for k, vs := range rpcErr.meta {
			call.ResponseMetadata()[k] = append(call.ResponseMetadata()[k], vs...)
		}
		payload = nil
	}
	meta, err := responseMetadata(call.respMeta)
	if err != nil {
		// A value no broker carries would cost the server its connection.
		rpcErr, meta, payload = err, nil, nil
	}
	// mqttrpc-target tells the caller who answered when it could not know:
	// a broadcast or an anycast. A unicast caller named the target itself.
	target := req.values.target
	withTarget := (target == TargetAll || target == TargetAny) && s.cfg.serverID != ""
	// An OK answer carries no mqttrpc-status: absent means 0 (protocol.md,
	// "Defaults stay off the wire").
	var user []userProperty
	if rpcErr != nil || withTarget || len(meta) > 0 {
		user = make([]userProperty, 0, 3+len(meta))
	}
	if withTarget {
		user = append(user, userProperty{propTarget, s.cfg.serverID})
	}
	if rpcErr != nil {
		user = append(user,
			userProperty{propStatus, strconv.FormatUint(uint64(rpcErr.Code()), 10)},
			userProperty{propMessage, encodeStatusMessage(rpcErr.Message())})
	}
	user = append(user, meta...)
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

// responseMetadata returns the user properties of a response's metadata,
// or Internal when the handler set one that MQTT cannot carry.
func responseMetadata(md Metadata) ([]userProperty, *Error) {
	var user []userProperty
	for k, vs := range md {
		if isReservedKey(k) {
			continue
		}
		if err := checkMetadataKey(k); err != nil {
			return nil, Errorf(Internal, "the handler set response metadata the server cannot send: %s", asError(err).Message())
		}
		for _, v := range vs {
			wire, err := encodeMetadataValue(k, v)
			if err != nil {
				return nil, Errorf(Internal, "the handler set response metadata the server cannot send: %s", asError(err).Message())
			}
			user = append(user, userProperty{k, wire})
		}
	}
	return user, nil
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

// topicMatchesFilter implements MQTT topic filter matching, with the rule
// that a filter starting with a wildcard matches no topic starting with $
// (MQTT-4.7.2-1): "#" does not admit "$SYS/...".
func topicMatchesFilter(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
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
	// DropBadResponseTopic: the ResponseTopic was no topic a server can
	// publish to (a wildcard, a control character): answering would get
	// the server disconnected.
	DropBadResponseTopic
	// DropUnanswered: the request was refused (see the other reasons) at a
	// moment when the server already had too many early answers queued, so
	// it got none.
	DropUnanswered
	numDropReasons
	statServed = numDropReasons
)

var dropReasonNames = [...]string{"expired", "no_response_topic", "response_topic_policy", "bad_correlation_data", "overload", "bad_payload", "response_failed", "shutting_down", "duplicate", "too_large", "bad_response_topic", "unanswered"}

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
