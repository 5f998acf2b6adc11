package rpc

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/codec"
)

// Property names of the protocol (MQTT user properties).
const (
	propVersion = "mqttrpc-version"
	propTimeout = "mqttrpc-timeout"
	propStatus  = "mqttrpc-status"
	propMessage = "mqttrpc-message"
	propTarget  = "mqttrpc-target"

	protocolVersion = "1"
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
	logger        *slog.Logger
	err           error // a bad option: every call fails with it

	// responseChans recycles the reply channels of unary calls.
	responseChans sync.Pool
	closed        atomic.Bool
}

type clientConfig struct {
	interceptors   []Interceptor
	defaultTimeout time.Duration
	retry          RetryPolicy
	maxPayload     int
	logger         *slog.Logger
	errs           []error // options given bad values
}

// NewClient returns a Client that calls over conn. Its response subscription
// is made by the first call and restored after every reconnect. An option
// given a bad value (WithDefaultTimeout(0), say) makes every call fail with
// InvalidArgument naming it.
func NewClient(conn *Conn, opts ...ClientOption) *Client {
	cfg := clientConfig{defaultTimeout: defaultTimeout, maxPayload: defaultMaxPayload, logger: conn.logger}
	for _, o := range opts {
		o.applyToClient(&cfg)
	}
	c := &Client{
		conn:          conn,
		responseTopic: DefaultResponsePrefix + conn.clientID,
		interceptors:  cfg.interceptors,
		timeout:       cfg.defaultTimeout,
		retry:         cfg.retry,
		maxPayload:    cfg.maxPayload,
		logger:        cfg.logger,
	}
	if len(cfg.errs) > 0 {
		c.err = cfg.errs[0]
	}
	if len(c.interceptors) > 0 {
		// Built once: the interceptors' closures are not made per call.
		c.chain = chainInterceptors(c.sendUnary, c.interceptors)
	}
	c.responseChans.New = func() any { return make(chan *paho.Publish, 1) }
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
	return c.conn.responses.detach(ctx, c)
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
	ch := c.responseChans.Get().(chan *paho.Publish)
	if out.corr, err = c.conn.responses.register(&responseWaiter{client: c, ch: ch}); err != nil {
		return err
	}
	defer c.conn.responses.forget(out.corr)
	p.Properties.CorrelationData = out.corr[:]
	if err := c.publishWithRetry(ctx, p, timeoutProp); err != nil {
		return err
	}
	select {
	case p, ok := <-ch:
		if !ok {
			return Errorf(Canceled, "client closed")
		}
		// Its one reply is taken and its pending entry gone: nobody else
		// holds the channel.
		c.responseChans.Put(ch)
		return c.decodeResponse(call, cc.cfg.codec, p, cc.resp)
	case <-ctx.Done():
		if ctx.Err() == context.DeadlineExceeded {
			return wrapCause(DeadlineExceeded, ctx.Err(), fmt.Sprintf("no response from %s on %q within the deadline", call.target, p.Topic))
		}
		return wrapCause(Canceled, ctx.Err(), "call canceled")
	}
}

// prepare validates a call and builds its request PUBLISH, without
// correlation data. timeoutProp is the index of the mqttrpc-timeout user
// property, set at each attempt.
func (c *Client) prepare(cc *clientCall, tmpl *TopicTemplate, req any) (out *outgoingRequest, timeoutProp int, err error) {
	call, cfg := &cc.Call, &cc.cfg
	switch {
	case call.target == "":
		return nil, 0, Errorf(InvalidArgument, "call to %s has no target: pass rpc.To(id) or rpc.ToAny()", call.Procedure())
	case call.target != TargetAny && call.target != TargetAll:
		if err := checkID("target", call.target); err != nil {
			return nil, 0, err
		}
	}
	if cfg.qos > QoS2 {
		return nil, 0, Errorf(InvalidArgument, "QoS %d is not 0, 1 or 2", cfg.qos)
	}
	for _, name := range tmpl.custom {
		if call.tokens[name] == "" {
			return nil, 0, Errorf(InvalidArgument, "topic template %q needs a value for {%s}: pass rpc.WithToken(%q, value)", tmpl.raw, name, name)
		}
	}
	topic, err := tmpl.render(&topicValues{service: call.service, target: call.target, method: call.method, custom: call.tokens})
	if err != nil {
		return nil, 0, err
	}
	call.topic = topic
	out = new(outgoingRequest)
	props := &out.props
	props.ResponseTopic = c.responseTopic
	// Absent means protobuf, and absent mqttrpc-version means 1: every
	// property costs allocations in the broker and in the server's MQTT
	// client, so the defaults are not sent.
	if ct := cfg.codec.ContentType(); ct != codec.ContentTypeProto {
		props.ContentType = ct
	}
	props.MessageExpiry = &out.expiry
	props.User = out.user[:0]
	if len(call.reqMeta) > 0 {
		props.User = make(paho.UserProperties, 0, 1+len(call.reqMeta))
	}
	for k, vs := range call.reqMeta {
		if err := checkMetadataKey(k); err != nil {
			return nil, 0, err
		}
		for _, v := range vs {
			wire, err := encodeMetadataValue(k, v)
			if err != nil {
				return nil, 0, err
			}
			props.User = append(props.User, paho.UserProperty{Key: k, Value: wire})
		}
	}
	if cfg.codec.ContentType() == codec.ContentTypeJSON {
		props.PayloadFormat = &payloadFormatUTF8
	}
	payload, err := cfg.codec.Marshal(req)
	if err != nil {
		return nil, 0, Errorf(Internal, "encoding the request: %w", err)
	}
	if len(payload) > c.maxPayload {
		return nil, 0, Errorf(ResourceExhausted, "request of %d bytes exceeds the client's limit of %d (WithMaxPayload)", len(payload), c.maxPayload)
	}
	timeoutProp = len(props.User)
	props.User = append(props.User, paho.UserProperty{Key: propTimeout})
	out.publish = paho.Publish{QoS: byte(cfg.qos), Topic: topic, Properties: props, Payload: payload}
	return out, timeoutProp, nil
}

// outgoingRequest holds a request PUBLISH and its parts in one allocation.
type outgoingRequest struct {
	publish paho.Publish
	props   paho.PublishProperties
	user    [1]paho.UserProperty // mqttrpc-timeout
	expiry  uint32
	corr    [16]byte // the correlation data
}

// publishWithRetry publishes the request, again after Unavailable failures
// as the retry policy allows.
func (c *Client) publishWithRetry(ctx context.Context, p *paho.Publish, timeoutProp int) error {
	for attempt := 1; ; attempt++ {
		err := c.publishRequest(ctx, p, timeoutProp)
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
// expiry and mqttrpc-timeout set from what is left of the deadline.
func (c *Client) publishRequest(ctx context.Context, p *paho.Publish, timeoutProp int) error {
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
	return c.conn.publish(ctx, p)
}

var payloadFormatUTF8 byte = 1

// expirySeconds rounds a duration up to whole seconds, at least 1, for the
// MessageExpiryInterval.
func expirySeconds(d time.Duration) uint32 {
	s := math.Ceil(d.Seconds())
	return uint32(min(max(s, 1), math.MaxUint32))
}

func (c *Client) decodeResponse(call *Call, requestCodec codec.Codec, p *paho.Publish, resp any) error {
	props := p.Properties
	if call.target == TargetAny || call.target == TargetAll {
		call.answeredBy = responseTarget(p)
	} else {
		call.answeredBy = call.target
	}
	code := OK // an answer without mqttrpc-status is OK
	var message string
	for _, u := range props.User {
		switch u.Key {
		case propStatus:
			var ok bool
			if code, ok = parseStatus(u.Value); !ok {
				return Errorf(Internal, "response has a malformed %s %q", propStatus, u.Value)
			}
		case propMessage:
			message = decodeStatusMessage(u.Value)
		case propVersion:
			// A server answers in the request's version: an answer in
			// another one is not meant for this client.
			if u.Value != protocolVersion {
				return Errorf(Internal, "the answer is in mqttrpc protocol version %q; this client speaks version %s", u.Value, protocolVersion)
			}
		default:
			if !isReservedKey(u.Key) {
				call.ResponseMetadata().Add(u.Key, decodeMetadataValue(u.Key, u.Value))
			}
		}
	}
	if code != OK {
		e := Errorf(code, "%s", message)
		e.wire = true
		if len(call.respMeta) > 0 {
			e.meta = call.respMeta.Clone()
		}
		return e
	}
	if len(p.Payload) > c.maxPayload {
		return Errorf(ResourceExhausted, "response of %d bytes exceeds the client's limit of %d (WithMaxPayload)", len(p.Payload), c.maxPayload)
	}
	cd, ok := requestCodec, true
	if props.ContentType != "" && props.ContentType != cd.ContentType() {
		cd, ok = builtinCodecs.Lookup(props.ContentType)
	}
	if !ok {
		return Errorf(Internal, "response has unknown content type %q", props.ContentType)
	}
	if err := cd.Unmarshal(p.Payload, resp); err != nil {
		return Errorf(Internal, "decoding the response as %s: %v", cd.ContentType(), err)
	}
	return nil
}

var builtinCodecs = codec.NewRegistry()
