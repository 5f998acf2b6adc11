package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/codec"
)

const (
	defaultTimeout    = 10 * time.Second
	defaultMaxPayload = 4 << 20
)

// Client calls methods of remote servers. Every Client on a Conn receives
// its answers on the Conn's one response topic, mqttrpc/responses/<client
// ID>, and concurrent calls are told apart by their CorrelationData, so a
// Conn may carry any number of Clients (each with its own options). A Client
// is safe for concurrent use.
type Client struct {
	conn          *Conn
	responseTopic string
	interceptors  []Interceptor
	chain         UnaryFunc // the interceptors around sendUnary; nil without interceptors
	timeout       time.Duration
	retry         RetryPolicy
	maxPayload    int
	streamWindow  int // credit granted to a stream's server
	// streamKeepalive is the keepalive interval of streams; 0: none.
	streamKeepalive time.Duration
	logger          *slog.Logger
	err             error // a bad option: every call fails with it
	noFailFast      bool  // WithFailFast(false)

	// responseChans recycles the reply channels of unary calls.
	responseChans sync.Pool
	// chunks holds the answers and stream messages arriving in chunks.
	chunks *reassembly
	closed atomic.Bool
}

type clientConfig struct {
	interceptors    []Interceptor
	defaultTimeout  time.Duration
	retry           RetryPolicy
	maxPayload      int
	reassemblyLimit int // 0: the default
	streamWindow    int
	keepalive       time.Duration
	logger          *slog.Logger
	noFailFast      bool
	errs            []error // options given bad values
}

// NewClient returns a Client that calls over conn. Its response subscription
// is made by the first call and restored after every reconnect. An option
// given a bad value (WithDefaultTimeout(0), say) makes every call fail with
// InvalidArgument naming it.
func NewClient(conn *Conn, opts ...ClientOption) *Client {
	cfg := clientConfig{defaultTimeout: defaultTimeout, maxPayload: defaultMaxPayload, streamWindow: DefaultStreamWindow, keepalive: DefaultStreamKeepalive, logger: conn.logger}
	for _, o := range opts {
		o.applyToClient(&cfg)
	}
	c := &Client{
		conn:            conn,
		responseTopic:   DefaultResponsePrefix + conn.clientID,
		interceptors:    cfg.interceptors,
		timeout:         cfg.defaultTimeout,
		retry:           cfg.retry,
		maxPayload:      cfg.maxPayload,
		streamWindow:    cfg.streamWindow,
		streamKeepalive: cfg.keepalive,
		logger:          cfg.logger,
		noFailFast:      cfg.noFailFast,
	}
	if len(cfg.errs) > 0 {
		c.err = cfg.errs[0]
	}
	if len(c.interceptors) > 0 {
		// Built once: the interceptors' closures are not made per call.
		c.chain = chainInterceptors(c.sendUnary, c.interceptors)
	}
	c.responseChans.New = func() any { return make(chan response, 1) }
	c.chunks = newReassembly(cfg.maxPayload, cfg.reassemblyLimit, "client")
	conn.responses.attach(conn)
	return c
}

// ResponseTopic returns the topic the client receives its responses on.
func (c *Client) ResponseTopic() string { return c.responseTopic }

// Close ends the client's calls in flight with Canceled. The last Client of
// a Conn to close unsubscribes the response topic. Close does not close the
// Conn.
func (c *Client) Close(ctx context.Context) error {
	if c.closed.Swap(true) {
		return nil
	}
	err := c.conn.responses.detach(ctx, c)
	c.chunks.close()
	return err
}

// Stub returns the client side of one method of a service, for generated
// code. opts apply to every call through the stub, before the call's own.
// A template error is reported by every call (generated code validates its
// templates when it is generated, so it only happens with hand-written
// descriptors).
func (c *Client) Stub(desc *ServiceDesc, method string, opts ...CallOption) *Stub {
	s := &Stub{client: c, service: desc.ServiceName, method: method, opts: opts, err: c.err}
	if s.err != nil {
		return s
	}
	var md *MethodDesc
	for i := range desc.Methods {
		if desc.Methods[i].MethodName == method {
			md = &desc.Methods[i]
		}
	}
	if md == nil {
		for i := range desc.Streams {
			if sd := &desc.Streams[i]; sd.StreamName == method {
				s.stream, s.qos = sd, sd.QoS
				s.template, s.err = parseTemplateOrDefault(sd.TopicTemplate)
				return s
			}
		}
		s.err = Errorf(Unimplemented, "service %s has no method %q", desc.ServiceName, method)
		return s
	}
	s.qos, s.idempotency = md.QoS, md.Idempotency
	s.template, s.err = parseTemplateOrDefault(md.TopicTemplate)
	return s
}

// Call invokes a method of a service that uses the default topic template,
// without generated code: req and resp are messages of the codec (protobuf
// messages for the built-in codecs), QoS 1 unless WithQoS says otherwise.
func (c *Client) Call(ctx context.Context, service, method string, req, resp any, opts ...CallOption) error {
	s := Stub{client: c, service: service, method: method, qos: QoS1, template: defaultTemplate, err: c.err}
	return s.Invoke(ctx, req, resp, opts...)
}

var defaultTemplate = must(ParseTopicTemplate(DefaultTopicTemplate))

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func parseTemplateOrDefault(s string) (*TopicTemplate, error) {
	if s == "" || s == DefaultTopicTemplate {
		return defaultTemplate, nil
	}
	t, err := ParseTopicTemplate(s)
	if err != nil {
		return nil, Errorf(Internal, "%v", err)
	}
	return t, nil
}

// Stub calls one method; generated clients hold one per method.
type Stub struct {
	client      *Client
	service     string
	method      string
	qos         QoS
	idempotency Idempotency
	template    *TopicTemplate
	stream      *StreamDesc // nil for a unary method
	opts        []CallOption
	err         error
}

// callConfig collects CallOptions.
type callConfig struct {
	target           string
	qos              QoS
	qosSet           bool
	codec            codec.Codec
	metadata         []metadataPair
	tokens           []tokenOption
	responseMetadata *Metadata
	answeredBy       *string
	broadcast        *broadcastConfig // FirstN, Quorum
}

type metadataPair struct {
	key    string
	values []string
}

// Invoke calls the method with req and decodes the answer into resp. Every
// failure is an *Error with a Code.
func (s *Stub) Invoke(ctx context.Context, req, resp any, opts ...CallOption) error {
	if s.err != nil {
		return s.err
	}
	cc := s.newCall(opts, "")
	cc.template, cc.resp = s.template, resp
	if f := s.client.conn.fleet.Load(); f != nil && !s.client.noFailFast {
		if err := f.failFast(cc); err != nil {
			return err
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.client.timeout)
		defer cancel()
	}
	var err error
	if s.client.chain == nil {
		// Nobody can look at the context's Call: skip it.
		err = s.client.send(ctx, cc, req)
	} else {
		_, err = s.client.chain(context.WithValue(ctx, callKey{}, cc), req)
	}
	if cc.cfg.responseMetadata != nil {
		*cc.cfg.responseMetadata = cc.respMeta
	}
	if cc.cfg.answeredBy != nil {
		*cc.cfg.answeredBy = cc.answeredBy
	}
	if err != nil {
		return asError(err)
	}
	return nil
}

// clientCall is a call on the client: the Call that interceptors see, and
// what the client needs to send it, in one allocation. The context of a
// call under interceptors carries it.
type clientCall struct {
	Call
	cfg      callConfig     // the call's options
	template *TopicTemplate // the method's request topic
	resp     any            // the response message to decode into
}

// sendUnary is the innermost step of a unary call under interceptors: it
// sends req for the call in ctx.
func (c *Client) sendUnary(ctx context.Context, req any) (any, error) {
	cc, ok := ctx.Value(callKey{}).(*clientCall)
	if !ok || cc.template == nil {
		return nil, Errorf(Internal, "a client interceptor called the next step with a context that does not derive from the one it was given")
	}
	return cc.resp, c.send(ctx, cc, req)
}

// newCall applies the stub's options, then the call's, into the call's
// cfg (target, if not empty, overrides them), and describes the call for
// interceptors.
func (s *Stub) newCall(opts []CallOption, target string) *clientCall {
	cc := &clientCall{Call: Call{
		service:     s.service,
		method:      s.method,
		idempotency: s.idempotency,
		isClient:    true,
	}}
	cfg := &cc.cfg
	cfg.qos, cfg.codec = s.qos, codec.Proto
	for _, o := range s.opts {
		o.applyToCall(cfg)
	}
	for _, o := range opts {
		o.applyToCall(cfg)
	}
	if target != "" {
		cfg.target = target
	}
	cc.target, cc.codecName = cfg.target, cfg.codec.Name()
	if len(cfg.metadata) > 0 {
		cc.reqMeta = make(Metadata, len(cfg.metadata))
		for _, p := range cfg.metadata {
			cc.reqMeta[p.key] = append(cc.reqMeta[p.key], p.values...)
		}
	}
	if len(cfg.tokens) > 0 {
		cc.tokens = make(map[string]string, len(cfg.tokens))
		for _, t := range cfg.tokens {
			cc.tokens[t.name] = t.value
		}
	}
	return cc
}

// send publishes one request and waits for its response.
func (c *Client) send(ctx context.Context, cc *clientCall, req any) error {
	call := &cc.Call
	if call.target == TargetAll {
		return Errorf(InvalidArgument, "a unary call cannot be addressed to _all (every server would answer); use Broadcast")
	}
	out, timeoutProp, err := c.prepare(cc, cc.template, req)
	if err != nil {
		return err
	}
	p := &out.publish
	ch := c.responseChans.Get().(chan response)
	if out.corr, err = c.conn.responses.register(&responseWaiter{client: c, ch: ch}); err != nil {
		return err
	}
	defer c.conn.responses.forget(out.corr)
	defer c.forgetChunks(out.corr)
	p.Properties.CorrelationData = out.corr[:]
	if err := c.publishWithRetry(ctx, p, timeoutProp, call.target); err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			// Cancelled while the broker had the request but had not
			// acknowledged it: it may be delivered.
			c.sendCancel(p)
		}
		return err
	}
	select {
	case resp, ok := <-ch:
		if !ok {
			return Errorf(Canceled, "client closed")
		}
		// Its one reply is taken and its pending entry gone: nobody else
		// holds the channel.
		c.responseChans.Put(ch)
		if resp.err != nil {
			return resp.err
		}
		return explainChunkRefusal(c.decodeResponse(call, cc.cfg.codec, resp.publish, cc.resp))
	case <-ctx.Done():
		if ctx.Err() == context.DeadlineExceeded {
			return wrapCause(DeadlineExceeded, ctx.Err(), fmt.Sprintf("no response from %s on %q within the deadline", call.target, p.Topic))
		}
		c.sendCancel(p)
		return wrapCause(Canceled, ctx.Err(), "call canceled")
	}
}

// forgetChunks drops what arrived of an answer to the call corr once the
// call is over.
func (c *Client) forgetChunks(corr [16]byte) {
	if c.chunks.active.Load() > 0 {
		c.chunks.forget(string(corr[:]))
	}
}

// publishWithRetry publishes the request to target, again after
// Unavailable failures as the retry policy allows.
func (c *Client) publishWithRetry(ctx context.Context, p *paho.Publish, timeoutProp int, target string) error {
	for attempt := 1; ; attempt++ {
		err := c.publishRequest(ctx, p, timeoutProp, target)
		if err == nil {
			return nil
		}
		// Unavailable before the broker took the request (no connection,
		// a failed publish, no subscriber): republishing with the same
		// correlation data cannot run the handler twice.
		if CodeOf(err) != Unavailable || attempt >= c.retry.MaxAttempts {
			return err
		}
		backoff := c.retry.backoff(attempt)
		deadline, _ := ctx.Deadline()
		if time.Until(deadline) <= backoff {
			return Errorf(Unavailable, "%s (gave up after %d attempts: the deadline comes before the next)", asError(err).Message(), attempt)
		}
		timer := time.NewTimer(backoff)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return contextError(ctx.Err(), "waiting to retry")
		}
	}
}

// publishRequest waits for the connection and publishes one attempt, with
// expiry and mqttrpc-timeout set from what is left of the deadline, in
// chunks when it does not fit the broker's Maximum Packet Size.
func (c *Client) publishRequest(ctx context.Context, p *paho.Publish, timeoutProp int, target string) error {
	if err := c.conn.waitReady(ctx); err != nil {
		return err
	}
	if err := c.conn.responses.ensureSubscribed(ctx); err != nil {
		return err
	}
	deadline, _ := ctx.Deadline()
	left := time.Until(deadline)
	if left <= 0 {
		return wrapCause(DeadlineExceeded, context.DeadlineExceeded, "deadline exceeded before the request was sent")
	}
	*p.Properties.MessageExpiry = expirySeconds(left) // prepare points it into the request's allocation
	p.Properties.User[timeoutProp].Value = strconv.FormatInt(max(left.Milliseconds(), 1), 10)
	if limit := c.conn.packetLimit(); !fits(p, limit) {
		return c.publishRequestChunks(ctx, p, limit, target)
	}
	return c.conn.publish(ctx, p)
}

// publishRequestChunks publishes a request that does not fit limit in
// chunks (docs/protocol.md, "Chunking"). A request to _any cannot go so:
// the share group would deal its chunks out to different members.
func (c *Client) publishRequestChunks(ctx context.Context, p *paho.Publish, limit int, target string) error {
	if target == TargetAny {
		return Errorf(ResourceExhausted, "a request of %d bytes does not fit the broker's Maximum Packet Size of %d bytes, and a request to _any cannot go in chunks (the share group would deal them out to different members): address one server with rpc.To", len(p.Payload), limit)
	}
	chunks, err := splitIntoChunks(p, limit)
	if err != nil {
		return err
	}
	return publishChunks(ctx, c.conn.publish, chunks)
}

var builtinCodecs = codec.NewRegistry()

// cancelTimeout bounds the publish of a cancel message.
const cancelTimeout = time.Second

// sendCancel tells the server that the caller gave up on request p, so
// that its handler's context ends (docs/protocol.md, "Cancellation"). It
// is best effort: a cancel that is lost leaves the handler to its deadline.
func (c *Client) sendCancel(p *paho.Publish) {
	ctx, cancel := context.WithTimeout(context.Background(), cancelTimeout)
	defer cancel()
	if err := c.conn.publish(ctx, cancelMessage(p)); err != nil {
		c.logger.Debug("mqttrpc: the cancel message was not delivered", "topic", p.Topic, "error", err)
	}
}
