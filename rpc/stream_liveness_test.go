package rpc_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// blockingCount is a Count handler that sends one message and waits for
// its context, reporting how it ended.
func blockingCount(ended chan<- error) func(ctx context.Context, req *wrapperspb.Int64Value, stream rpc.ServerStreamingServer[wrapperspb.Int64Value]) error {
	return func(ctx context.Context, req *wrapperspb.Int64Value, stream rpc.ServerStreamingServer[wrapperspb.Int64Value]) error {
		if err := stream.Send(wrapperspb.Int64(0)); err != nil {
			return err
		}
		<-ctx.Done()
		ended <- context.Cause(ctx)
		return ctx.Err()
	}
}

// A stream whose server goes silent ends with Unavailable after three
// keepalive intervals, long before its deadline; one whose caller goes
// silent ends the handler's context with Unavailable as its cause.
func TestStreamLiveness(t *testing.T) {
	t.Parallel()
	const keepalive = 100 * time.Millisecond
	t.Run("server silent", func(t *testing.T) {
		t.Parallel()
		b := newTestbroker(t)
		ended := make(chan error, 1)
		startStreamServer(t, b.url, &streamService{count: blockingCount(ended)}, rpc.WithServerID("dev-1"))
		client := newClient(t, b.url, rpc.WithStreamKeepalive(keepalive))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		stream := openCount(t, ctx, client, 1, rpc.To("dev-1"))
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		b.tb.DropPublishes(client.ResponseTopic(), 0) // the server's keepalives no longer arrive
		_, err := stream.Recv()
		wantCode(t, err, rpc.Unavailable)
		if !contains(err.Error(), "silent") {
			t.Errorf("error %q does not say the server was silent", err)
		}
		b.tb.ClearFaults()
		cancel() // the handler's context ends by the cancel message
		<-ended
	})
	t.Run("caller silent", func(t *testing.T) {
		t.Parallel()
		b := newTestbroker(t)
		ended := make(chan error, 1)
		srv := startStreamServer(t, b.url, &streamService{count: blockingCount(ended)}, rpc.WithServerID("dev-1"))
		client := newClient(t, b.url, rpc.WithStreamKeepalive(keepalive))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		stream := openCount(t, ctx, client, 1, rpc.To("dev-1"))
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		b.tb.DropPublishes("mqttrpc/"+streamServiceName+"/dev-1/Count", 0) // the caller's keepalives no longer arrive
		select {
		case cause := <-ended:
			if rpc.CodeOf(cause) != rpc.Unavailable {
				t.Errorf("the handler's context ended with cause %v, want Unavailable", cause)
			}
		case <-ctx.Done():
			t.Fatal("the handler's context did not end: the caller's silence went unnoticed")
		}
		waitFor(t, func() bool { return srv.Stats().Dropped[rpc.DropSilentPeer] == 1 })
		// The server tells the caller why, which hears it.
		_, err := stream.Recv()
		wantCode(t, err, rpc.Unavailable)
	})
}

// A stream whose server's connection is gone (its process killed) ends
// with Unavailable on the caller's side within three keepalive intervals,
// on both brokers.
func TestStreamServerGone(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		ended := make(chan error, 1)
		conn := dial(t, b.url, rpc.WithClientID(uniqueID("server")))
		srv := rpc.NewServer(conn, rpc.WithServerID("dev-1"))
		srv.RegisterService(&streamDesc, &streamService{count: blockingCount(ended)})
		if err := srv.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		client := newClient(t, b.url, rpc.WithStreamKeepalive(100*time.Millisecond))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		stream := openCount(t, ctx, client, 1, rpc.To("dev-1"))
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		if err := conn.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		_, err := stream.Recv()
		wantCode(t, err, rpc.Unavailable)
		// The server hears nobody either: its handler's context ends.
		if cause := <-ended; rpc.CodeOf(cause) != rpc.Unavailable && !errors.Is(cause, context.Canceled) {
			t.Errorf("the handler's context ended with %v", cause)
		}
		_ = srv.Shutdown(context.Background())
	})
}

// A stream has the deadline of a unary call: at the caller's deadline
// Recv returns DeadlineExceeded and the handler's context ends; when the
// server's WithMaxTimeout comes first, the server says DeadlineExceeded
// when it passes.
func TestStreamDeadline(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		ended := make(chan error, 2)
		startStreamServer(t, b.url, &streamService{count: blockingCount(ended)}, rpc.WithServerID("dev-1"))
		startStreamServer(t, b.url, &streamService{count: blockingCount(ended)}, rpc.WithServerID("dev-2"), rpc.WithMaxTimeout(300*time.Millisecond))
		client := newClient(t, b.url)

		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		stream := openCount(t, ctx, client, 1, rpc.To("dev-1"))
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		_, err := stream.Recv()
		if e := wantCode(t, err, rpc.DeadlineExceeded); rpc.IsWireError(e) {
			t.Errorf("DeadlineExceeded came from the server: %v", e)
		}
		if cause := <-ended; !errors.Is(cause, context.DeadlineExceeded) {
			t.Errorf("the handler's context ended with %v, want DeadlineExceeded", cause)
		}

		stream = openCount(t, testCtx(t), client, 1, rpc.To("dev-2"))
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		_, err = stream.Recv()
		if e := wantCode(t, err, rpc.DeadlineExceeded); !rpc.IsWireError(e) {
			t.Errorf("DeadlineExceeded did not come from the server: %v", e)
		}
		if cause := <-ended; !errors.Is(cause, context.DeadlineExceeded) {
			t.Errorf("the capped handler's context ended with %v, want DeadlineExceeded", cause)
		}
	})
}

// A stream message that the broker loses while both sides live: once the
// sender has said it sent more and the message is a keepalive interval
// overdue, the receiver asks for it again (mqttrpc-resume), and the
// sender resends it from its replay buffer: the stream goes on, every
// message once and in order. A window of 1 makes the lost message the
// only one in flight, so that the fault drops it and nothing else.
func TestStreamLostMessage(t *testing.T) {
	t.Parallel()
	// Long enough that no keepalive falls between the test's steps, which
	// would be dropped in place of the message.
	const keepalive = 300 * time.Millisecond
	t.Run("server message", func(t *testing.T) {
		t.Parallel()
		b := newTestbroker(t)
		proceed := make(chan struct{})
		svc := &streamService{count: func(ctx context.Context, req *wrapperspb.Int64Value, stream rpc.ServerStreamingServer[wrapperspb.Int64Value]) error {
			for i := range int64(10) {
				if i == 1 {
					<-proceed
				}
				if err := stream.Send(wrapperspb.Int64(i)); err != nil {
					return err
				}
			}
			return nil
		}}
		startStreamServer(t, b.url, svc, rpc.WithServerID("dev-1"))
		client := newClient(t, b.url, rpc.WithStreamKeepalive(keepalive), rpc.WithStreamWindow(1))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		stream := openCount(t, ctx, client, 0, rpc.To("dev-1"))
		if m, err := stream.Recv(); err != nil || m.GetValue() != 0 {
			t.Fatalf("first message: %v, %v", m, err)
		}
		b.tb.DropPublishes(client.ResponseTopic(), 1) // message 1
		close(proceed)
		for want := int64(1); want < 10; want++ {
			m, err := stream.Recv()
			if err != nil || m.GetValue() != want {
				t.Fatalf("message %d: %v, %v; want it resent after the loss", want, m, err)
			}
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("after the last message: %v, want io.EOF", err)
		}
	})
	t.Run("client message", func(t *testing.T) {
		t.Parallel()
		b := newTestbroker(t)
		seen := &countingInterceptor{}
		startStreamServer(t, b.url, &streamService{}, rpc.WithServerID("dev-1"), rpc.WithStreamWindow(1), rpc.WithInterceptors(seen))
		client := newClient(t, b.url, rpc.WithStreamKeepalive(keepalive))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cs, err := client.Stub(&streamDesc, "Sum").NewStream(ctx, rpc.To("dev-1"))
		if err != nil {
			t.Fatal(err)
		}
		sum := &rpc.GenericClientStream[wrapperspb.Int64Value, wrapperspb.Int64Value]{ClientStream: cs}
		if err := sum.Send(wrapperspb.Int64(0)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return seen.received.Load() == 1 })     // message 0 is through
		b.tb.DropPublishes("mqttrpc/"+streamServiceName+"/dev-1/Sum", 1) // message 1
		if err := sum.Send(wrapperspb.Int64(1)); err != nil {
			t.Fatal(err)
		}
		// Message 2 waits for credit until the server, missing 1, has
		// asked for it again and received it.
		if err := sum.Send(wrapperspb.Int64(2)); err != nil {
			t.Fatalf("Send after the lost message: %v", err)
		}
		got, err := sum.CloseAndRecv()
		if err != nil || got.GetValue() != 3 {
			t.Fatalf("sum %v, %v; want 3: message 1 resent once", got, err)
		}
	})
}

// A Shutdown whose context ends before a running stream's handler
// returns ends the handler's context, and the caller hears Unavailable.
func TestStreamShutdown(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		ended := make(chan error, 1)
		srv := rpc.NewServer(dial(t, b.url, rpc.WithClientID(uniqueID("server"))), rpc.WithServerID("dev-1"))
		srv.RegisterService(&streamDesc, &streamService{count: blockingCount(ended)})
		if err := srv.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		client := newClient(t, b.url)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		stream := openCount(t, ctx, client, 1, rpc.To("dev-1"))
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		shutdownCtx, stop := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer stop()
		if err := srv.Shutdown(shutdownCtx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown = %v, want DeadlineExceeded (the stream still ran)", err)
		}
		if cause := <-ended; !errors.Is(cause, context.Canceled) {
			t.Errorf("the handler's context ended with %v, want Canceled", cause)
		}
		_, err := stream.Recv()
		if e := wantCode(t, err, rpc.Unavailable); !rpc.IsWireError(e) {
			t.Errorf("Unavailable did not come from the server: %v", e)
		}
	})
}
