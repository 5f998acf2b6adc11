package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// defaultBroker is where mqttrpc connects without --broker or
// MQTTRPC_BROKER.
const defaultBroker = "mqtt://127.0.0.1:1883"

// globalFlags are the flags before the command.
type globalFlags struct {
	broker, username, password string
	caCert, cert, key          string
	clientID                   string
	protoFiles, importPaths    listFlag
	protosets                  listFlag
	output                     string
	verbose                    bool
	connectTimeout             time.Duration
}

// listFlag is a flag that may be given many times.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func (g *globalFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&g.broker, "broker", envOr("MQTTRPC_BROKER", defaultBroker), "broker `URL`: mqtt://, mqtts://, ws:// or wss:// (env MQTTRPC_BROKER)")
	fs.StringVar(&g.username, "username", "", "user `name` for the broker")
	fs.StringVar(&g.password, "password", os.Getenv("MQTTRPC_PASSWORD"), "`password` for the broker (env MQTTRPC_PASSWORD; prefer the environment: flags show in ps)")
	fs.StringVar(&g.caCert, "cacert", "", "PEM `file` of the CAs that sign the broker's certificate (TLS)")
	fs.StringVar(&g.cert, "cert", "", "PEM `file` of the client certificate (TLS)")
	fs.StringVar(&g.key, "key", "", "PEM `file` of the client certificate's key (TLS)")
	fs.StringVar(&g.clientID, "client-id", "", "MQTT client `ID` (default a random one)")
	fs.Var(&g.protoFiles, "proto", "schema: a .proto `file` (repeatable; default: the schema by reflection over MQTT)")
	fs.Var(&g.importPaths, "I", "schema: an import `directory` for --proto (repeatable)")
	fs.Var(&g.protosets, "protoset", "schema: a `file` holding a FileDescriptorSet (protoc --descriptor_set_out --include_imports; repeatable)")
	fs.StringVar(&g.output, "o", "json", "output `format`: json or text")
	fs.BoolVar(&g.verbose, "v", false, "print response metadata (headers and trailers) on stderr")
	fs.DurationVar(&g.connectTimeout, "connect-timeout", 3*time.Second, "how long to try to connect to the broker")
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// connect dials the broker as the global flags say, once per run: the
// schema by reflection and the command share the connection.
func (a *app) connect(ctx context.Context) (*rpc.Conn, error) {
	if a.conn != nil {
		return a.conn, nil
	}
	conn, err := a.dial(ctx)
	a.conn = conn
	return conn, err
}

// dial dials the broker as the global flags say.
func (a *app) dial(ctx context.Context) (*rpc.Conn, error) {
	g := &a.globals
	if g.connectTimeout <= 0 {
		return nil, usagef("--connect-timeout %v: want a positive duration", g.connectTimeout)
	}
	id := g.clientID
	if id == "" {
		id = "mqttrpc-cli-" + strings.ReplaceAll(uuid.NewString(), "-", "")[:16]
	}
	// One call and gone: TCP_QUICKACK from the first packet, so that stock
	// Mosquitto (Nagle on) does not hold the answer 40 ms behind our
	// delayed ACK.
	// No presence: the command serves nothing, and a run that ends
	// without a DISCONNECT would leave its Will, an empty offline record,
	// retained for a day.
	opts := []rpc.ConnOption{rpc.WithClientID(id), rpc.WithDialTimeout(g.connectTimeout), rpc.WithTCPQuickAckFromStart(), rpc.WithPresence(false)}
	if g.username != "" || g.password != "" {
		opts = append(opts, rpc.WithCredentials(g.username, g.password))
	}
	if g.caCert != "" || g.cert != "" || g.key != "" {
		cfg, err := g.tlsConfig()
		if err != nil {
			return nil, err
		}
		opts = append(opts, rpc.WithTLSConfig(cfg))
	}
	conn, err := dialOrRefused(ctx, g.broker, opts)
	if err != nil {
		var refused *refusedError
		if errors.As(err, &refused) {
			return nil, fmt.Errorf("cannot connect to the broker: nothing listens on %s (connection refused; is it running? set --broker or MQTTRPC_BROKER)", refused.addr)
		}
		hint := "is it running? set --broker or MQTTRPC_BROKER"
		switch rpc.CodeOf(err) {
		case rpc.PermissionDenied, rpc.Unauthenticated:
			hint = "check --username and MQTTRPC_PASSWORD (or --password)"
		case rpc.InvalidArgument:
			hint = "check --broker: a URL such as mqtt://127.0.0.1:1883"
			if strings.Contains(err.Error(), "client identifier") || strings.Contains(err.Error(), "client ID") {
				hint = "check --client-id"
			}
		}
		var rerr *rpc.Error
		if errors.As(err, &rerr) {
			return nil, fmt.Errorf("cannot connect to the broker: %s (%s; %s)", rerr.Message(), rerr.Code(), hint)
		}
		return nil, fmt.Errorf("cannot connect to the broker: %v (%s)", err, hint)
	}
	return conn, nil
}

// probeAfter is how long dial waits for the broker before it asks the
// operating system whether anything listens at the broker's address: a
// broker that is up answers well before, so that the probe, a connection
// the broker would see close without a CONNECT, is only made when
// something is wrong.
const probeAfter = 300 * time.Millisecond

// refusedError says that nothing listens at the broker's address.
type refusedError struct{ addr string }

func (e *refusedError) Error() string { return "connection refused by " + e.addr }

// dialOrRefused dials the broker with rpc.Dial, which tries again until its
// dial timeout (a broker may be starting); but when a TCP connection to the
// broker's address is refused, nothing listens there, and a person at a
// shell wants to know at once rather than after --connect-timeout (as
// grpcurl fails at once on a refused port).
func dialOrRefused(ctx context.Context, broker string, opts []rpc.ConnOption) (*rpc.Conn, error) {
	addr := brokerAddr(broker)
	if addr == "" {
		return rpc.Dial(ctx, broker, opts...)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var refused atomic.Pointer[refusedError]
	probed := make(chan struct{})
	probe := time.AfterFunc(probeAfter, func() {
		defer close(probed)
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			return
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			refused.Store(&refusedError{addr: addr})
			cancel()
		}
	})
	conn, err := rpc.Dial(ctx, broker, opts...)
	if !probe.Stop() {
		<-probed // it ran, or runs now: at most a second
	}
	if r := refused.Load(); r != nil && err != nil {
		return nil, r
	}
	return conn, err
}

// brokerAddr is the TCP address of a plain or TLS broker URL, its default
// port filled in; "" for WebSocket URLs and what does not parse (Dial
// says what is wrong with it).
func brokerAddr(broker string) string {
	u, err := url.Parse(broker)
	if err != nil || u.Hostname() == "" {
		return ""
	}
	port := u.Port()
	if port == "" {
		switch u.Scheme {
		case "mqtt", "tcp":
			port = "1883"
		case "mqtts", "ssl", "tls":
			port = "8883"
		default:
			return ""
		}
	} else if u.Scheme != "mqtt" && u.Scheme != "tcp" && u.Scheme != "mqtts" && u.Scheme != "ssl" && u.Scheme != "tls" {
		return ""
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// tlsConfig reads --cacert, --cert and --key.
func (g *globalFlags) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if g.caCert != "" {
		pem, err := os.ReadFile(g.caCert)
		if err != nil {
			return nil, fmt.Errorf("--cacert: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--cacert: %s holds no PEM certificate", g.caCert)
		}
		cfg.RootCAs = pool
	}
	if (g.cert == "") != (g.key == "") {
		return nil, usagef("--cert and --key go together")
	}
	if g.cert != "" {
		pair, err := tls.LoadX509KeyPair(g.cert, g.key)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %v", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}
