package rpc

import (
	"crypto/tls"
	"log/slog"
	"time"

	"github.com/mqttrpc/mqttrpc/codec"
)

// ConnOption configures a connection made with Dial.
type ConnOption interface{ applyToConn(*connConfig) }

// ClientOption configures a Client.
type ClientOption interface{ applyToClient(*clientConfig) }

// ServerOption configures a Server.
type ServerOption interface{ applyToServer(*serverConfig) }

// CallOption configures a call; it may be given to a stub (applies to every
// call through it) or to one call.
type CallOption interface{ applyToCall(*callConfig) }

// ServiceOption configures one service registered on a Server.
type ServiceOption interface{ applyToService(*serviceConfig) }

// ClientServerOption is an option for both Clients and Servers.
type ClientServerOption interface {
	ClientOption
	ServerOption
}

// Option is an option for connections, Clients and Servers.
type Option interface {
	ConnOption
	ClientOption
	ServerOption
}

// CallServiceOption is an option for calls and for services.
type CallServiceOption interface {
	CallOption
	ServiceOption
}

type connOptionFunc func(*connConfig)

func (f connOptionFunc) applyToConn(c *connConfig) { f(c) }

type clientOptionFunc func(*clientConfig)

func (f clientOptionFunc) applyToClient(c *clientConfig) { f(c) }

type serverOptionFunc func(*serverConfig)

func (f serverOptionFunc) applyToServer(c *serverConfig) { f(c) }

type callOptionFunc func(*callConfig)

func (f callOptionFunc) applyToCall(c *callConfig) { f(c) }

// --- connection options ---

// WithClientID sets the MQTT client identifier. It names the client's
// response topic (mqttrpc/responses/<id>), so it must be a valid topic level
// not starting with "_". Default: "mqttrpc-" and 13 random hex characters.
func WithClientID(id string) ConnOption {
	return connOptionFunc(func(c *connConfig) { c.clientID = id })
}

// WithCredentials sets the username and password sent in CONNECT; an empty
// password sends none. It wins over credentials in the broker URL
// (mqtt://user:password@host). Default: those of the URL, else none.
func WithCredentials(username, password string) ConnOption {
	return connOptionFunc(func(c *connConfig) {
		c.username, c.password, c.credentialsSet = username, []byte(password), true
	})
}

// WithTLSConfig sets the TLS configuration for mqtts://, tls://, ssl:// and
// wss:// URLs. Default: the system roots and the URL's host name.
func WithTLSConfig(cfg *tls.Config) ConnOption {
	return connOptionFunc(func(c *connConfig) { c.tlsConfig = cfg })
}

// WithKeepAlive sets the MQTT keepalive, rounded down to whole seconds.
// Default: 30 s.
func WithKeepAlive(d time.Duration) ConnOption {
	return connOptionFunc(func(c *connConfig) { c.keepAlive = uint16(min(d/time.Second, 65535)) })
}

// WithConnectTimeout bounds each connection attempt (TCP, TLS and
// WebSocket handshakes, CONNECT until CONNACK), on the first connection and
// on every reconnect. Default: 10 s. Dial's overall wait is
// WithDialTimeout.
func WithConnectTimeout(d time.Duration) ConnOption {
	return connOptionFunc(func(c *connConfig) { c.connectTimeout = d })
}

// WithDialTimeout bounds how long Dial waits for the first connection,
// over all its attempts, when ctx allows longer; then Dial fails with
// Unavailable, naming the broker and the last connect error. 0 or less
// waits as long as ctx. Default: DefaultDialTimeout (5 s).
func WithDialTimeout(d time.Duration) ConnOption {
	return connOptionFunc(func(c *connConfig) { c.dialTimeout = max(d, 0) })
}

// WithSessionExpiry asks the broker to keep the session (subscriptions and
// queued QoS 1/2 messages) for d after the connection drops, so requests
// and responses published during a short outage are delivered after the
// reconnect. Default: 0, a clean session on every connection.
func WithSessionExpiry(d time.Duration) ConnOption {
	return connOptionFunc(func(c *connConfig) { c.sessionExpiry = uint32(min(d/time.Second, 1<<32-1)) })
}

// WithAckAfterHandling makes servers acknowledge a QoS 1 or 2 request to
// the broker only after it was handled and answered, instead of on receipt,
// so that with a persistent session (WithSessionExpiry) the broker
// redelivers a request whose server died mid-call. Acknowledgements are sent
// in the order the requests arrived, so a slow call holds back the
// acknowledgements of those behind it, and with them part of the broker's
// in-flight window. Default: on when WithSessionExpiry is set, else off.
// With NewConnection, set autopaho's EnableManualAcknowledgment instead (and
// acknowledge the application's own messages).
func WithAckAfterHandling(on bool) ConnOption {
	return connOptionFunc(func(c *connConfig) { c.ackAfterHandling = &on })
}

// WithWriteCoalescing makes a plain TCP connection (mqtt://, tcp://) write
// the MQTT packets queued while the previous write was in progress in one
// system call, from a writer goroutine, instead of one system call per
// packet. It raises calls/s under concurrent load (see docs/benchmarks.md)
// and costs about nothing on a single call, since an idle connection writes
// at once. Default: on. TLS and WebSocket connections are not affected.
func WithWriteCoalescing(on bool) ConnOption {
	return connOptionFunc(func(c *connConfig) { c.writeCoalescing = &on })
}

// WithTCPQuickAckFromStart re-arms TCP_QUICKACK (see WithTCPQuickAck)
// from the connection's first acknowledgement on, without waiting to see the
// broker stall. For short-lived connections, such as a command-line tool's
// single call, that end before the third stall would arm it: on stock
// Mosquitto a one-shot call takes about 100 ms without it and 15 ms with it
// (docs/benchmarks.md). It costs a system call per acknowledgement read on a
// broker that needs none. It implies WithTCPQuickAck(true).
func WithTCPQuickAckFromStart() ConnOption {
	return connOptionFunc(func(c *connConfig) {
		on := true
		c.quickAck, c.quickAckFromStart = &on, true
	})
}

// WithTCPQuickAck makes a plain TCP connection on Linux acknowledge the
// broker's acknowledgements (PUBACK and the like) at once (TCP_QUICKACK)
// once it has seen the broker stall, while at most 16 calls are in flight.
// A broker that leaves Nagle's algorithm on, as Mosquitto does unless
// set_tcp_nodelay is true, holds a packet that follows an acknowledgement
// until our delayed ACK, about 40 ms per call. The connection recognises
// such stalls (a packet 38-60 ms after an acknowledgement) and re-arms
// TCP_QUICKACK after the third, so the first calls on such a broker are
// slow and the rest are not; on a broker with TCP_NODELAY it never re-arms
// and costs nothing. It pays when both the caller's and the server's
// connections have it. Default: on; it does nothing on other systems, or
// over TLS and WebSocket.
func WithTCPQuickAck(on bool) ConnOption {
	return connOptionFunc(func(c *connConfig) {
		c.quickAck = &on
		if !on {
			c.quickAckFromStart = false
		}
	})
}

// --- shared options ---

type loggerOption struct{ logger *slog.Logger }

func (o loggerOption) applyToConn(c *connConfig)     { c.logger = o.logger }
func (o loggerOption) applyToClient(c *clientConfig) { c.logger = o.logger }
func (o loggerOption) applyToServer(c *serverConfig) { c.logger = o.logger }

// WithLogger sets the structured logger. Default: no logging. Payloads are
// never logged.
func WithLogger(l *slog.Logger) Option {
	if l == nil {
		l = discardLogger()
	}
	return loggerOption{l}
}

type interceptorsOption struct{ interceptors []Interceptor }

func (o interceptorsOption) applyToClient(c *clientConfig) {
	c.interceptors = append(c.interceptors, o.interceptors...)
}

func (o interceptorsOption) applyToServer(c *serverConfig) {
	c.interceptors = append(c.interceptors, o.interceptors...)
}

// WithInterceptors adds interceptors; the first given runs first (outermost).
func WithInterceptors(interceptors ...Interceptor) ClientServerOption {
	return interceptorsOption{interceptors}
}

type defaultTimeoutOption struct{ d time.Duration }

func (o defaultTimeoutOption) applyToClient(c *clientConfig) {
	c.defaultTimeout = o.d
	c.errs = appendPositive(c.errs, "WithDefaultTimeout", o.d)
}

func (o defaultTimeoutOption) applyToServer(c *serverConfig) {
	c.defaultTimeout = o.d
	c.errs = appendPositive(c.errs, "WithDefaultTimeout", o.d)
}

// appendPositive records an error for an option whose duration must be
// positive.
func appendPositive(errs []error, option string, d time.Duration) []error {
	if d <= 0 {
		return append(errs, Errorf(InvalidArgument, "%s(%v): the duration must be positive", option, d))
	}
	return errs
}

// appendAtLeast records an error for an option whose count must be at
// least least.
func appendAtLeast(errs []error, option string, n, least int) []error {
	if n < least {
		return append(errs, Errorf(InvalidArgument, "%s(%d): must be at least %d", option, n, least))
	}
	return errs
}

// WithDefaultTimeout sets the deadline of calls whose context has none
// (client), or of requests that carry neither a MessageExpiryInterval nor
// mqttrpc-timeout (server). Default: 10 s. It must be positive.
func WithDefaultTimeout(d time.Duration) ClientServerOption {
	return defaultTimeoutOption{d}
}

// RetryPolicy says how a client republishes a request that could not be
// delivered: not connected, the publish failed, or the broker reported no
// matching subscribers. Such a request never reached a server, and a retry
// reuses its CorrelationData, so retrying cannot run a handler twice.
// Retries stop at the call's deadline.
type RetryPolicy struct {
	// MaxAttempts counts the first attempt; 0 or 1 means no retry.
	MaxAttempts int
	// InitialBackoff is the wait before the second attempt; it doubles up
	// to MaxBackoff. Defaults: 50 ms and 2 s.
	InitialBackoff time.Duration
	// MaxBackoff caps the wait between attempts.
	MaxBackoff time.Duration
}

func (p RetryPolicy) backoff(attempt int) time.Duration {
	d, limit := p.InitialBackoff, p.MaxBackoff
	if d <= 0 {
		d = 50 * time.Millisecond
	}
	if limit <= 0 {
		limit = 2 * time.Second
	}
	for i := 1; i < attempt && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// WithRetry sets the client's retry policy. Default: no retries, so that a
// call to a target nobody serves fails at once. Negative fields are an
// error.
func WithRetry(p RetryPolicy) ClientOption {
	return clientOptionFunc(func(c *clientConfig) {
		c.retry = p
		if p.MaxAttempts < 0 || p.InitialBackoff < 0 || p.MaxBackoff < 0 {
			c.errs = append(c.errs, Errorf(InvalidArgument, "WithRetry(%+v): fields may not be negative", p))
		}
	})
}

type streamWindowOption struct{ n int }

func (o streamWindowOption) applyToClient(c *clientConfig) {
	c.streamWindow = o.n
	c.errs = appendAtLeast(c.errs, "WithStreamWindow", o.n, 1)
}

func (o streamWindowOption) applyToServer(c *serverConfig) {
	c.streamWindow = o.n
	c.errs = appendAtLeast(c.errs, "WithStreamWindow", o.n, 1)
}

// WithStreamWindow sets the window of flow control of streams: how many
// messages of a stream a Client (as the receiver of server messages) or a
// Server (of client messages) accepts ahead of the application reading
// them. The sender waits when they are unread; the receiver grants more
// credit as they are read, in steps of half the window. Default:
// DefaultStreamWindow (128). A window below 1 is refused.
func WithStreamWindow(n int) ClientServerOption {
	return streamWindowOption{min(n, maxCredit)}
}

// WithStreamKeepalive sets the keepalive interval of the client's
// streams, sent in each open (mqttrpc-keepalive): both sides send a
// message at least that often, and a side that hears nothing from the
// other for three intervals ends the stream, the client with Unavailable,
// the server by ending the handler's context. So a stream whose peer died
// (a killed process, a lost connection) ends within three intervals, not
// at its deadline, and one whose message the broker lost ends with
// DataLoss three intervals after the sender said it had sent it. 0 turns
// liveness off. Default: DefaultStreamKeepalive (5 s); servers take at
// least 50 ms whatever the client asks.
func WithStreamKeepalive(d time.Duration) ClientOption {
	return clientOptionFunc(func(c *clientConfig) {
		c.keepalive = d
		if d < 0 {
			c.errs = append(c.errs, Errorf(InvalidArgument, "WithStreamKeepalive(%v): the interval must not be negative", d))
		}
	})
}

type maxPayloadOption struct{ n int }

func (o maxPayloadOption) applyToClient(c *clientConfig) {
	c.maxPayload = o.n
	c.errs = appendAtLeast(c.errs, "WithMaxPayload", o.n, 1)
}

func (o maxPayloadOption) applyToServer(c *serverConfig) {
	c.maxPayload = o.n
	c.errs = appendAtLeast(c.errs, "WithMaxPayload", o.n, 1)
}

// WithMaxPayload bounds the payload of requests and responses (and of
// stream messages), in bytes. A client refuses to send a larger request
// and to accept a larger response; a server answers a larger request, or
// a handler's larger response, with ResourceExhausted. The bound is on the
// message, whether it travels in one PUBLISH or, past the broker's Maximum
// Packet Size, in chunks (docs/protocol.md, "Chunking"): a chunked message
// announces its size, and one over the bound is refused at its first
// chunk. Default: 4 MiB. It must be at least 1.
func WithMaxPayload(n int) ClientServerOption {
	return maxPayloadOption{n}
}

type reassemblyLimitOption struct{ n int }

func (o reassemblyLimitOption) applyToClient(c *clientConfig) {
	c.reassemblyLimit = o.n
	c.errs = appendAtLeast(c.errs, "WithReassemblyLimit", o.n, 1)
}

func (o reassemblyLimitOption) applyToServer(c *serverConfig) {
	c.reassemblyLimit = o.n
	c.errs = appendAtLeast(c.errs, "WithReassemblyLimit", o.n, 1)
}

// WithReassemblyLimit bounds the memory, in bytes, that a Client or Server
// holds for messages arriving in chunks (docs/protocol.md, "Chunking")
// that are not complete yet, all of them together: each counts with its
// announced size from its first chunk until it is complete, refused or
// expired. A message that would take the total past the bound is refused
// with ResourceExhausted (a server answers its request so; a client's
// call or stream fails so). Default: DefaultReassemblyLimit (64 MiB), or
// WithMaxPayload when that is larger. It must be at least 1.
func WithReassemblyLimit(n int) ClientServerOption {
	return reassemblyLimitOption{n}
}

// --- server options ---

// WithServerID sets the server's ID: it serves requests whose {target} is
// this ID, and names itself in the mqttrpc-target property of its answers
// to broadcast (_all) and anycast (_any) requests. A device uses its device
// ID. The ID may not start with "_".
func WithServerID(id string) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.serverID = id })
}

// WithShareGroup makes the server a member of a shared-subscription group:
// a call to target "_any" (ToAny) is served by exactly one member.
func WithShareGroup(group string) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.shareGroup = group })
}

// WithGateway makes the server serve every target: it subscribes with "+" as
// the target and the handler reads the target from Call.Target. A gateway
// answers for the devices behind it.
func WithGateway() ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.gateway = true })
}

// WithoutBroadcast stops a server with an ID from subscribing to broadcasts
// (target "_all").
func WithoutBroadcast() ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.noBroadcast = true })
}

// WithConcurrency sets how many handlers run at once. Default: 64. It must
// be at least 1 (Start fails otherwise).
func WithConcurrency(n int) ServerOption {
	return serverOptionFunc(func(c *serverConfig) {
		c.concurrency = n
		c.errs = appendAtLeast(c.errs, "WithConcurrency", n, 1)
	})
}

// WithMethodConcurrency sets how many handlers of any one method run at
// once, so that a slow method cannot take every worker. Default: three
// quarters of WithConcurrency. It must be at least 1.
func WithMethodConcurrency(n int) ServerOption {
	return serverOptionFunc(func(c *serverConfig) {
		c.methodConcurrency = n
		c.errs = appendAtLeast(c.errs, "WithMethodConcurrency", n, 1)
	})
}

// WithQueueSize sets how many requests wait when all handlers are busy;
// past it a request is answered ResourceExhausted. Default: 256. 0 means no
// queue; it may not be negative.
func WithQueueSize(n int) ServerOption {
	return serverOptionFunc(func(c *serverConfig) {
		c.queueSize = n
		c.errs = appendAtLeast(c.errs, "WithQueueSize", n, 0)
	})
}

// WithMaxTimeout caps the deadline a caller may ask for: when the cap
// passes before the caller's deadline, the handler's context ends and the
// caller is answered DeadlineExceeded at once. Default: 5 minutes. It must
// be positive.
func WithMaxTimeout(d time.Duration) ServerOption {
	return serverOptionFunc(func(c *serverConfig) {
		c.maxTimeout = d
		c.errs = appendPositive(c.errs, "WithMaxTimeout", d)
	})
}

// WithResponseTopicPolicy decides which response topics the server publishes
// to. A request whose ResponseTopic fails the policy is dropped unanswered
// and counted, so nobody can make the server publish on a topic of their
// choosing. Default: ResponseTopicFilter("mqttrpc/responses/+").
func WithResponseTopicPolicy(allow func(topic string) bool) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.responseTopicPolicy = allow })
}

// WithCodecs adds codecs to the protobuf and JSON ones, found by the
// request's ContentType.
func WithCodecs(codecs ...codec.Codec) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.codecs = append(c.codecs, codecs...) })
}

// WithDedupLimits bounds the cache that keeps a request from running twice
// (entries live until the request's deadline). Default: 10,000 entries and
// 16 MiB. Both must be at least 1.
func WithDedupLimits(entries, bytes int) ServerOption {
	return serverOptionFunc(func(c *serverConfig) {
		c.dedupEntries, c.dedupBytes = max(entries, 1), max(bytes, 1)
		c.errs = appendAtLeast(c.errs, "WithDedupLimits entries", entries, 1)
		c.errs = appendAtLeast(c.errs, "WithDedupLimits bytes", bytes, 1)
	})
}

// WithDropHook calls hook for every request the server drops or rejects
// instead of executing, with the reason and the request topic; Stats counts
// the same events. Metrics exporters use it. The hook may run on the MQTT
// client's receive goroutine: it must return quickly and not block.
func WithDropHook(hook func(reason DropReason, topic string)) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.dropHook = hook })
}

// --- call options ---

// To addresses a call to the server with this ID (a device ID, an instance ID).
func To(target string) CallOption {
	return callOptionFunc(func(c *callConfig) { c.target = target })
}

// ToAny addresses a call to any one server of a share group (target "_any").
// With a Fleet on the Conn (WatchFleet) the call fails at once with
// Unavailable when presence lists no online share-group member or gateway
// serving the service (WithFailFast).
func ToAny() CallOption {
	return callOptionFunc(func(c *callConfig) { c.target = TargetAny })
}

// WithQoS sets the QoS of the request and its response. Default: the
// method's, QoS 1 unless its proto says otherwise.
func WithQoS(q QoS) CallOption {
	return callOptionFunc(func(c *callConfig) { c.qos, c.qosSet = q, true })
}

// WithMetadata adds metadata to the request, sent as MQTT user properties.
// Keys starting with "mqttrpc-" are reserved.
func WithMetadata(md Metadata) CallOption {
	return callOptionFunc(func(c *callConfig) {
		for k, vs := range md {
			c.metadata = append(c.metadata, metadataPair{k, vs})
		}
	})
}

// WithCodec sets the codec of the request; the server answers in the same
// codec. Default: codec.Proto.
func WithCodec(cd codec.Codec) CallOption {
	return callOptionFunc(func(c *callConfig) { c.codec = cd })
}

// ResponseMetadata stores the response's metadata into *md when the call
// returns, for errors too. On a stream it stores the response headers
// (what ClientStream.Header returns) once they have arrived: after the
// first Recv returns.
func ResponseMetadata(md *Metadata) CallOption {
	return callOptionFunc(func(c *callConfig) { c.responseMetadata = md })
}

// AnsweredBy stores the ID of the server that answered into *id when the
// call returns with an answer (OK or an error the server sent): for ToAny,
// the member of the share group that took the call; for To, the target.
// It is "" when no server answered, and for a server without an ID (a
// gateway answering _any).
func AnsweredBy(id *string) CallOption {
	return callOptionFunc(func(c *callConfig) { c.answeredBy = id })
}

type tokenOption struct{ name, value string }

func (o tokenOption) applyToCall(c *callConfig) {
	c.tokens = append(c.tokens, o)
}

func (o tokenOption) applyToService(c *serviceConfig) {
	if c.tokens == nil {
		c.tokens = map[string]string{}
	}
	c.tokens[o.name] = o.value
}

// WithToken sets the value of a custom topic token such as {site}. On a
// call it is required for every custom token of the method's template; on a
// registered service it narrows the subscription to that value (without it
// the server subscribes with "+" and the handler reads Call.Token).
func WithToken(name, value string) CallServiceOption {
	return tokenOption{name, value}
}
