package rpc_test

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// Streams under testbroker's faults: every message delivered twice, in
// either direction, and messages overtaken by later ones. The application
// sees each message once, in order, and a handler runs once.
func TestStreamFaults(t *testing.T) {
	t.Parallel()
	t.Run("server messages duplicated", func(t *testing.T) {
		t.Parallel()
		b := newTestbroker(t)
		startStreamServer(t, b.url, &streamService{}, rpc.WithServerID("dev-1"))
		client := newClient(t, b.url, rpc.WithStreamWindow(8))
		b.tb.DuplicatePublishes(client.ResponseTopic(), 0)
		n, err := receiveAll(t, openCount(t, testCtx(t), client, 200, rpc.To("dev-1")))
		if !errors.Is(err, io.EOF) || n != 200 {
			t.Fatalf("received %d, then %v; want 200, then io.EOF", n, err)
		}
	})
	t.Run("client messages duplicated", func(t *testing.T) {
		t.Parallel()
		b := newTestbroker(t)
		svc := &streamService{}
		startStreamServer(t, b.url, svc, rpc.WithServerID("dev-1"), rpc.WithStreamWindow(8))
		client := newClient(t, b.url)
		b.tb.DuplicatePublishes("mqttrpc/"+streamServiceName+"/dev-1/Sum", 0)
		if got := sumOf(t, client, 100, rpc.To("dev-1")); got != 4950 {
			t.Fatalf("sum = %d, want 4950 (each message once)", got)
		}
		if n := svc.sums.Load(); n != 1 {
			t.Errorf("the handler ran %d times for one stream whose open came twice", n)
		}
	})
	t.Run("server messages reordered", func(t *testing.T) {
		t.Parallel()
		b := newTestbroker(t)
		startStreamServer(t, b.url, &streamService{}, rpc.WithServerID("dev-1"))
		client := newClient(t, b.url, rpc.WithStreamWindow(16))
		// The first three messages arrive after the ones that follow them.
		b.tb.DelayPublishes(client.ResponseTopic(), 3, 100*time.Millisecond)
		n, err := receiveAll(t, openCount(t, testCtx(t), client, 50, rpc.To("dev-1")))
		if !errors.Is(err, io.EOF) || n != 50 {
			t.Fatalf("received %d, then %v; want 50 in order, then io.EOF", n, err)
		}
	})
	t.Run("client messages reordered", func(t *testing.T) {
		t.Parallel()
		b := newTestbroker(t)
		startStreamServer(t, b.url, &streamService{}, rpc.WithServerID("dev-1"), rpc.WithStreamWindow(16))
		client := newClient(t, b.url)
		// The open and the first two messages arrive after the ones that
		// follow them; the open's delay makes the server accept late.
		b.tb.DelayPublishes("mqttrpc/"+streamServiceName+"/dev-1/Sum", 3, 100*time.Millisecond)
		if got := sumOf(t, client, 30, rpc.To("dev-1")); got != 435 {
			t.Fatalf("sum = %d, want 435", got)
		}
	})
}

// sumOf streams 0…n-1 to Sum and returns the answer.
func sumOf(t *testing.T, c *rpc.Client, n int64, opts ...rpc.CallOption) int64 {
	t.Helper()
	cs, err := c.Stub(&streamDesc, "Sum").NewStream(testCtx(t), opts...)
	if err != nil {
		t.Fatal(err)
	}
	sum := &rpc.GenericClientStream[wrapperspb.Int64Value, wrapperspb.Int64Value]{ClientStream: cs}
	for i := range n {
		if err := sum.Send(wrapperspb.Int64(i)); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
	}
	got, err := sum.CloseAndRecv()
	if err != nil {
		t.Fatalf("CloseAndRecv: %v", err)
	}
	return got.GetValue()
}

// A stream to _any sticks to the member of the share group that accepted
// it: every later message reaches that server alone.
func TestStreamToAnySticks(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		a, c := &streamService{}, &streamService{}
		startStreamServer(t, b.url, a, rpc.WithServerID("srv-a"), rpc.WithShareGroup("sum"))
		startStreamServer(t, b.url, c, rpc.WithServerID("srv-b"), rpc.WithShareGroup("sum"))
		client := newClient(t, b.url, rpc.WithStreamWindow(4))
		for range 4 {
			if got := sumOf(t, client, 40, rpc.ToAny()); got != 780 {
				t.Fatalf("sum = %d, want 780: messages went to another server", got)
			}
		}
		if n := a.sums.Load() + c.sums.Load(); n != 4 {
			t.Errorf("%d handlers ran for 4 streams", n)
		}
		// A server stream to _any names its server and takes its credit.
		n, err := receiveAll(t, openCount(t, testCtx(t), client, 30, rpc.ToAny()))
		if !errors.Is(err, io.EOF) || n != 30 {
			t.Fatalf("server stream to _any: %d, then %v", n, err)
		}
	})
}

// countingInterceptor counts what passes through the streams it wraps.
type countingInterceptor struct {
	opened, sent, received atomic.Int64
	procedure              atomic.Value
}

func (ci *countingInterceptor) WrapUnary(next rpc.UnaryFunc) rpc.UnaryFunc { return next }

func (ci *countingInterceptor) WrapStreamingClient(next rpc.StreamingClientFunc) rpc.StreamingClientFunc {
	return func(ctx context.Context) rpc.StreamingClientConn {
		ci.opened.Add(1)
		if call, ok := rpc.CallFromContext(ctx); ok {
			ci.procedure.Store(call.Procedure())
		}
		return &countingClientConn{StreamingClientConn: next(ctx), ci: ci}
	}
}

func (ci *countingInterceptor) WrapStreamingHandler(next rpc.StreamingHandlerFunc) rpc.StreamingHandlerFunc {
	return func(ctx context.Context, conn rpc.StreamingHandlerConn) error {
		ci.opened.Add(1)
		if call, ok := rpc.CallFromContext(ctx); ok {
			ci.procedure.Store(call.Procedure())
		}
		return next(ctx, &countingHandlerConn{StreamingHandlerConn: conn, ci: ci})
	}
}

type countingClientConn struct {
	rpc.StreamingClientConn
	ci *countingInterceptor
}

func (c *countingClientConn) Send(m any) error {
	c.ci.sent.Add(1)
	return c.StreamingClientConn.Send(m)
}

func (c *countingClientConn) Receive(m any) error {
	err := c.StreamingClientConn.Receive(m)
	if err == nil {
		c.ci.received.Add(1)
	}
	return err
}

type countingHandlerConn struct {
	rpc.StreamingHandlerConn
	ci *countingInterceptor
}

func (c *countingHandlerConn) Send(m any) error {
	c.ci.sent.Add(1)
	return c.StreamingHandlerConn.Send(m)
}

func (c *countingHandlerConn) Receive(m any) error {
	err := c.StreamingHandlerConn.Receive(m)
	if err == nil {
		c.ci.received.Add(1)
	}
	return err
}

// Streams pass through the interceptors of both sides, message by message.
func TestStreamInterceptors(t *testing.T) {
	t.Parallel()
	b := newTestbroker(t)
	server, caller := &countingInterceptor{}, &countingInterceptor{}
	startStreamServer(t, b.url, &streamService{}, rpc.WithServerID("dev-1"), rpc.WithInterceptors(server))
	client := newClient(t, b.url, rpc.WithInterceptors(caller))
	n, err := receiveAll(t, openCount(t, testCtx(t), client, 7, rpc.To("dev-1")))
	if !errors.Is(err, io.EOF) || n != 7 {
		t.Fatalf("received %d, then %v", n, err)
	}
	if got := sumOf(t, client, 5, rpc.To("dev-1")); got != 10 {
		t.Fatalf("sum = %d", got)
	}
	// Count: 1 request and 7 messages; Sum: 5 messages and 1 response.
	// The server's Receive counts the open's request and Sum's 5.
	for _, c := range []struct {
		side                   string
		ci                     *countingInterceptor
		opened, sent, received int64
	}{
		{"client", caller, 2, 1 + 5, 7 + 1},
		{"server", server, 2, 7 + 1, 1 + 5},
	} {
		if c.ci.opened.Load() != c.opened || c.ci.sent.Load() != c.sent || c.ci.received.Load() != c.received {
			t.Errorf("%s interceptor: opened %d, sent %d, received %d; want %d, %d, %d", c.side,
				c.ci.opened.Load(), c.ci.sent.Load(), c.ci.received.Load(), c.opened, c.sent, c.received)
		}
		if got, _ := c.ci.procedure.Load().(string); got != "/"+streamServiceName+"/Sum" {
			t.Errorf("%s interceptor saw procedure %q", c.side, got)
		}
	}
}

// A connection cut mid-stream (testbroker disconnects the client; it
// reconnects) never leaves a silent gap: the stream resumes (all 200,
// then io.EOF; TestStreamResumesAfterConnectionCut insists on it), or,
// should the reconnection take longer than this test's short liveness
// bound (3 × 200 ms), the caller sees a prefix of the messages in order,
// then a clear code, DataLoss or Unavailable, not the deadline.
func TestStreamConnectionCut(t *testing.T) {
	t.Parallel()
	for _, who := range []string{"server", "caller"} {
		t.Run(who, func(t *testing.T) {
			t.Parallel()
			b := newTestbroker(t)
			serverID, callerID := uniqueID("server"), uniqueID("caller")
			svc := &streamService{count: func(ctx context.Context, req *wrapperspb.Int64Value, stream rpc.ServerStreamingServer[wrapperspb.Int64Value]) error {
				for i := range int64(200) {
					if err := stream.Send(wrapperspb.Int64(i)); err != nil {
						return err
					}
				}
				return nil
			}}
			srv := rpc.NewServer(dial(t, b.url, rpc.WithClientID(serverID)), rpc.WithServerID("dev-1"))
			srv.RegisterService(&streamDesc, svc)
			if err := srv.Start(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
			client := rpc.NewClient(dial(t, b.url, rpc.WithClientID(callerID)), rpc.WithStreamKeepalive(200*time.Millisecond), rpc.WithStreamWindow(8))
			t.Cleanup(func() { _ = client.Close(context.Background()) })
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			stream := openCount(t, ctx, client, 0, rpc.To("dev-1"))
			var n int64
			var err error
			for {
				var m *wrapperspb.Int64Value
				if m, err = stream.Recv(); err != nil {
					break
				}
				if m.GetValue() != n {
					t.Fatalf("message %d is %d: a gap or a copy reached the application", n, m.GetValue())
				}
				if n++; n == 50 {
					id := map[string]string{"server": serverID, "caller": callerID}[who]
					if err := b.tb.Disconnect(id); err != nil {
						t.Fatal(err)
					}
				}
			}
			switch code := rpc.CodeOf(err); {
			case errors.Is(err, io.EOF) && n == 200:
				t.Logf("the stream survived the cut: %d messages", n)
			case code == rpc.DataLoss, code == rpc.Unavailable:
				t.Logf("after %d messages: %v", n, err)
			default:
				t.Fatalf("after %d messages: %v, want io.EOF after 200, DataLoss or Unavailable", n, err)
			}
		})
	}
}

// brokenContextInterceptor opens streams with a context that does not
// derive from the one it was given.
type brokenContextInterceptor struct{}

func (brokenContextInterceptor) WrapUnary(next rpc.UnaryFunc) rpc.UnaryFunc { return next }

func (brokenContextInterceptor) WrapStreamingClient(next rpc.StreamingClientFunc) rpc.StreamingClientFunc {
	return func(context.Context) rpc.StreamingClientConn { return next(context.Background()) }
}

func (brokenContextInterceptor) WrapStreamingHandler(next rpc.StreamingHandlerFunc) rpc.StreamingHandlerFunc {
	return next
}

// An interceptor that loses the call's context gets a stream whose every
// method reports Internal; nothing panics and nothing is published.
func TestStreamInterceptorLosesContext(t *testing.T) {
	t.Parallel()
	b := newTestbroker(t)
	client := newClient(t, b.url, rpc.WithInterceptors(brokenContextInterceptor{}))
	for _, method := range []string{"Count", "Sum"} {
		cs, err := client.Stub(&streamDesc, method).NewStream(testCtx(t), rpc.To("dev-1"))
		if err != nil {
			t.Fatal(err)
		}
		wantCode(t, cs.SendMsg(wrapperspb.Int64(1)), rpc.Internal)
		wantCode(t, cs.RecvMsg(new(wrapperspb.Int64Value)), rpc.Internal)
		if err := cs.CloseSend(); err != nil && rpc.CodeOf(err) != rpc.Internal {
			t.Errorf("CloseSend: %v", err)
		}
		_ = cs.CloseReceive()
	}
}
