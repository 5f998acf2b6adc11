package rpc

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/codec"
)

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
	chunks  *reassembly // requests and stream messages arriving in chunks
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
	// Workers that ran out of requests wait for the next one instead of
	// ending (dispatch.go, park): a new goroutine per call would start
	// with a small stack and grow it on every call.
	parked    int           // waiting in park and not yet handed a request
	handoff   chan *request // requests handed to parked workers; room for maxParkedWorkers
	stopParks chan struct{} // closed when the server stops taking calls
	idle      chan struct{} // made by Shutdown, closed when no handler runs
	shutDown  bool          // Shutdown finished: the route is removed

	streamsMu sync.Mutex
	streams   map[string]*serverStream // running and lingering streams by dedupKey, for their client's messages
	lingering lingerSet                // streams kept after their handler returned (stream_linger.go)

	fleet serverFleet // presence, health and labels (health.go)
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
	reassemblyLimit     int // 0: the default
	streamWindow        int
	onCreditWait        func(seq int64)   // tests: a stream's Send is about to wait for credit
	presence            *bool             // WithPresence; default on
	labels              map[string]string // WithLabels
	noReflection        bool              // WithReflection(false)
	errs                []error           // options given bad values
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
	// own are those of filters that name this server alone (its ID, or
	// every target of a gateway): a stream's client messages come there,
	// so Shutdown keeps them until the handlers have returned.
	own map[string]bool
}

type method struct {
	desc     *MethodDesc
	template *TopicTemplate
	call     UnaryFunc // handler wrapped in the server's interceptors
	// A streaming method has stream and streamCall (its handler wrapped in
	// the interceptors) instead of desc and call.
	stream     *StreamDesc
	streamCall StreamingHandlerFunc

	stats methodCounters // per-method stats (method_stats.go)

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
		streamWindow:        DefaultStreamWindow,
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
		streams: map[string]*serverStream{},
		handoff: make(chan *request, maxParkedWorkers),
		// stopParks is closed by stopTakingCalls.
		stopParks: make(chan struct{}),
	}
	s.baseCtx, s.stopAll = context.WithCancel(context.Background())
	s.chunks = newReassembly(cfg.maxPayload, cfg.reassemblyLimit, "server")
	s.chunks.onExpire = func(key chunkKey, topic string) {
		if key.seq < 0 {
			s.drop(DropIncomplete, topic, "a chunked request was still incomplete at its deadline")
		}
	}
	s.fleet.init(&cfg)
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
	for i := range desc.Streams {
		sd := &desc.Streams[i]
		if err := checkTokenValue("method name", sd.StreamName); err != nil {
			panic(fmt.Sprintf("rpc: RegisterService %s: stream %d: %v", desc.ServiceName, i, err))
		}
		if svc.methods[sd.StreamName] != nil {
			panic(fmt.Sprintf("rpc: RegisterService %s: method %s declared twice", desc.ServiceName, sd.StreamName))
		}
		if sd.Handler == nil || (!sd.ServerStreams && !sd.ClientStreams) {
			panic(fmt.Sprintf("rpc: RegisterService %s: stream %s has no Handler or streams in neither direction", desc.ServiceName, sd.StreamName))
		}
		tmpl, err := parseTemplateOrDefault(sd.TopicTemplate)
		if err != nil {
			panic(fmt.Sprintf("rpc: RegisterService %s: method %s: %v", desc.ServiceName, sd.StreamName, err))
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
		handler := func(ctx context.Context, conn StreamingHandlerConn) error {
			return sd.Handler(impl, &serverStreamView{ctx: ctx, conn: conn})
		}
		svc.methods[sd.StreamName] = &method{stream: sd, template: tmpl, streamCall: chainStreamingHandler(handler, s.cfg.interceptors)}
	}
	for name, value := range sc.tokens {
		if err := checkTokenValue(name, value); err != nil {
			panic(fmt.Sprintf("rpc: RegisterService %s: %v", desc.ServiceName, err))
		}
	}
	svc.own = map[string]bool{}
	for _, t := range svc.templates {
		filters, own := s.filtersFor(svc, t)
		svc.filters = append(svc.filters, filters...)
		for _, f := range own {
			svc.own[f] = true
		}
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

// filtersFor returns the subscription filters of one template of a
// service, and those of them that name this server alone.
func (s *Server) filtersFor(svc *service, t *TopicTemplate) (filters, own []string) {
	v := topicValues{service: svc.desc.ServiceName, custom: svc.tokens}
	add := func(target string) string {
		v.target = target
		f := t.filter(&v)
		filters = append(filters, f)
		return f
	}
	switch {
	case s.cfg.gateway:
		own = append(own, add(""))
	case s.cfg.serverID != "":
		own = append(own, add(s.cfg.serverID))
		if !s.cfg.noBroadcast {
			add(TargetAll)
		}
	}
	if s.cfg.shareGroup != "" {
		v.target = TargetAny
		filters = append(filters, "$share/"+s.cfg.shareGroup+"/"+t.filter(&v))
	}
	return filters, own
}

// Start validates the configuration, subscribes to the services' topics and
// begins serving. It waits for the subscriptions to be acknowledged (bounded
// by ctx); they are restored after every reconnect. With presence
// (WithPresence, on by default) the server then appears in its
// connection's retained presence record, and Start waits for that record
// to be published too, so that a caller who looks after Start sees the
// server.
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
	s.announce(ctx)
	return nil
}

// Shutdown marks the server offline in its connection's presence record
// (and waits for that to be published, bounded by ctx), stops taking
// calls, leaves its share group and broadcasts, waits for running
// handlers to finish, and then unsubscribes from its own topics, which
// carry the client messages of its running streams. Requests that arrive
// meanwhile are answered Unavailable, so their callers may retry
// elsewhere. If ctx ends first, the remaining handlers' contexts are
// cancelled, Shutdown waits up to a second for them to return (so that
// each stream's final message, Unavailable, goes out before the Conn is
// closed), and ctx's error is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.shutDown || !s.started {
		s.stopTakingCalls()
		s.shutDown = true
		s.mu.Unlock()
		return nil
	}
	s.stopTakingCalls()
	// The share group's and broadcasts' subscriptions go first, so that
	// the broker hands new calls to the group's other members; this
	// server's own topics stay until its handlers have returned, as the
	// client messages of its running streams (data, credit, half-close,
	// cancel) come there. New requests meanwhile are answered Unavailable.
	var shared, own []string
	for _, svc := range s.services {
		for _, f := range svc.filters {
			if svc.own[f] {
				own = append(own, f)
			} else {
				shared = append(shared, f)
			}
		}
	}
	s.mu.Unlock()
	// Offline first, so that callers stop sending before the server stops
	// taking calls.
	s.withdraw(ctx)
	s.mu.Lock()
	idle := s.idle
	if idle == nil {
		idle = make(chan struct{})
		s.idle = idle
		if s.running == 0 {
			close(idle)
		}
	}
	s.mu.Unlock()

	var unsubErr error
	if len(shared) > 0 {
		unsubErr = s.conn.unsubscribe(ctx, shared)
	}
	var err error
	select {
	case <-idle:
	case <-ctx.Done():
		// Handlers that ignore their context finish on their own; each
		// still answers or drops its request.
		err = ctx.Err()
	}
	if len(own) > 0 {
		uctx := ctx
		if err != nil {
			// ctx has ended: unsubscribing must not fail for that.
			var cancel context.CancelFunc
			uctx, cancel = context.WithTimeout(context.Background(), shutdownGrace)
			defer cancel()
		}
		if e := s.conn.unsubscribe(uctx, own); unsubErr == nil {
			unsubErr = e
		}
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
	if err != nil {
		// The handlers' contexts have ended: give those that heed it a
		// moment to return, so that their streams' final messages
		// (Unavailable) go out before the caller closes the Conn.
		grace := time.NewTimer(shutdownGrace)
		select {
		case <-idle:
		case <-grace.C:
		}
		grace.Stop()
	}
	s.dropLingering()
	remove()
	s.early.close()
	s.chunks.close()
	return err
}

// shutdownGrace bounds how long Shutdown waits, once its context has
// ended, for the handlers it cancelled to return, and for unsubscribing.
const shutdownGrace = time.Second
