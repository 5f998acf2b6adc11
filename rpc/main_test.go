package rpc_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/internal/mosquittotest"
	"github.com/mqttrpc/mqttrpc/internal/rpctest"
	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// echoService is a hand-written service, as generated code would declare it:
// one method, Echo, whose behaviour each test chooses.
type echoService struct {
	calls  atomic.Int64
	handle func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error)
}

func (s *echoService) Echo(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	s.calls.Add(1)
	if s.handle != nil {
		return s.handle(ctx, in)
	}
	return wrapperspb.String(in.GetValue()), nil
}

// Ping answers "pong" at once; it shares the server with Echo.
func (s *echoService) Ping(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	return wrapperspb.String("pong"), nil
}

type echoServer interface {
	Echo(context.Context, *wrapperspb.StringValue) (*wrapperspb.StringValue, error)
	Ping(context.Context, *wrapperspb.StringValue) (*wrapperspb.StringValue, error)
}

const echoServiceName = "test.v1.EchoService"

var echoDesc = rpc.ServiceDesc{
	ServiceName: echoServiceName,
	HandlerType: (*echoServer)(nil),
	Methods: []rpc.MethodDesc{{
		MethodName: "Echo",
		QoS:        rpc.QoS1,
		NewRequest: func() any { return new(wrapperspb.StringValue) },
		Handler: func(srv any, ctx context.Context, req any) (any, error) {
			return srv.(echoServer).Echo(ctx, req.(*wrapperspb.StringValue))
		},
	}, {
		MethodName: "Ping",
		QoS:        rpc.QoS1,
		NewRequest: func() any { return new(wrapperspb.StringValue) },
		Handler: func(srv any, ctx context.Context, req any) (any, error) {
			return srv.(echoServer).Ping(ctx, req.(*wrapperspb.StringValue))
		},
	}},
}

// broker is a broker under test: testbroker or Mosquitto.
type broker struct {
	name string
	url  string
	tb   *testbroker.Broker    // nil for Mosquitto
	mq   *mosquittotest.Broker // nil for testbroker
}

func fromRPCTest(b *rpctest.Broker) *broker {
	return &broker{name: b.Name, url: b.URL, tb: b.TB, mq: b.MQ}
}

// eachBroker runs f against testbroker and against Mosquitto (skipped when
// Mosquitto is not installed, unless MQTTRPC_REQUIRE_MOSQUITTO=1).
func eachBroker(t *testing.T, f func(t *testing.T, b *broker)) {
	t.Helper()
	rpctest.EachBroker(t, func(t *testing.T, b *rpctest.Broker) { f(t, fromRPCTest(b)) })
}

func testCtx(t *testing.T) context.Context { return rpctest.Context(t, 30*time.Second) }

func uniqueID(prefix string) string { return rpctest.UniqueID(prefix) }

// dial connects to the broker and closes the connection at cleanup.
func dial(t *testing.T, url string, opts ...rpc.ConnOption) *rpc.Conn {
	t.Helper()
	return rpctest.Dial(t, url, opts...)
}

// newClient dials and returns a client, closed at cleanup.
func newClient(t *testing.T, url string, opts ...rpc.ClientOption) *rpc.Client {
	t.Helper()
	c := rpc.NewClient(dial(t, url, rpc.WithClientID(uniqueID("caller"))), opts...)
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// startServer dials, registers svc and starts serving; it shuts down at
// cleanup.
func startServer(t *testing.T, url string, svc *echoService, opts ...rpc.ServerOption) *rpc.Server {
	t.Helper()
	conn := dial(t, url, rpc.WithClientID(uniqueID("server")))
	srv := rpc.NewServer(conn, opts...)
	srv.RegisterService(&echoDesc, svc)
	if err := srv.Start(testCtx(t)); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return srv
}

// echo calls Echo with value.
func echo(ctx context.Context, c *rpc.Client, value string, opts ...rpc.CallOption) (string, error) {
	out := new(wrapperspb.StringValue)
	err := c.Call(ctx, echoServiceName, "Echo", wrapperspb.String(value), out, opts...)
	return out.GetValue(), err
}

// wantCode fails unless err is an *rpc.Error with code want.
func wantCode(t *testing.T, err error, want rpc.Code) *rpc.Error {
	t.Helper()
	var rpcErr *rpc.Error
	if !errors.As(err, &rpcErr) {
		t.Fatalf("error = %v (%T), want an *rpc.Error with code %v", err, err, want)
	}
	if rpcErr.Code() != want {
		t.Fatalf("code = %v (%v), want %v", rpcErr.Code(), err, want)
	}
	return rpcErr
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func newTestbroker(t *testing.T) *broker { return fromRPCTest(rpctest.NewTestbroker(t)) }

func newMosquitto(t *testing.T) *broker { return fromRPCTest(rpctest.NewMosquitto(t)) }

func shortCtx(t *testing.T, d time.Duration) context.Context { return rpctest.Context(t, d) }

// waitFor polls cond until it holds (rpctest.WaitFor).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	rpctest.WaitFor(t, cond)
}

// rawClient is a bare MQTT client that follows docs/protocol.md alone.
type rawClient = rpctest.RawClient

func newRawClient(t *testing.T, brokerURL, clientID string) *rawClient {
	t.Helper()
	return rpctest.NewRawClient(t, brokerURL, clientID)
}
