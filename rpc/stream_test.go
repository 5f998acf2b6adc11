package rpc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// streamService is a hand-written streaming service, as generated code
// declares one: Count (server streaming), Sum (client streaming) and
// Chat (bidirectional). Each test chooses what Count does.
type streamService struct {
	count func(ctx context.Context, req *wrapperspb.Int64Value, stream rpc.ServerStreamingServer[wrapperspb.Int64Value]) error
	sums  atomic.Int64 // Sum handlers run
}

// Count sends req.Value numbers, 0, 1, 2…, unless the test says otherwise.
func (s *streamService) Count(ctx context.Context, req *wrapperspb.Int64Value, stream rpc.ServerStreamingServer[wrapperspb.Int64Value]) error {
	if s.count != nil {
		return s.count(ctx, req, stream)
	}
	stream.SetHeader(rpc.Metadata{"x-header": {"h"}})
	for i := range req.GetValue() {
		if err := stream.Send(wrapperspb.Int64(i)); err != nil {
			return err
		}
	}
	stream.SetTrailer(rpc.Metadata{"x-trailer": {"t"}})
	return nil
}

// Sum adds the numbers the caller sends.
func (s *streamService) Sum(ctx context.Context, stream rpc.ClientStreamingServer[wrapperspb.Int64Value, wrapperspb.Int64Value]) error {
	s.sums.Add(1)
	var sum int64
	for {
		n, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(wrapperspb.Int64(sum))
		}
		if err != nil {
			return err
		}
		sum += n.GetValue()
	}
}

// Chat answers every message with it, upper-cased by a prefix.
func (s *streamService) Chat(ctx context.Context, stream rpc.BidiStreamingServer[wrapperspb.StringValue, wrapperspb.StringValue]) error {
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(wrapperspb.String("re: " + m.GetValue())); err != nil {
			return err
		}
	}
}

type streamServer interface {
	Count(context.Context, *wrapperspb.Int64Value, rpc.ServerStreamingServer[wrapperspb.Int64Value]) error
	Sum(context.Context, rpc.ClientStreamingServer[wrapperspb.Int64Value, wrapperspb.Int64Value]) error
	Chat(context.Context, rpc.BidiStreamingServer[wrapperspb.StringValue, wrapperspb.StringValue]) error
}

const streamServiceName = "test.v1.StreamService"

var streamDesc = rpc.ServiceDesc{
	ServiceName: streamServiceName,
	HandlerType: (*streamServer)(nil),
	Streams: []rpc.StreamDesc{{
		StreamName:    "Count",
		QoS:           rpc.QoS1,
		ServerStreams: true,
		Handler: func(srv any, stream rpc.ServerStream) error {
			m := new(wrapperspb.Int64Value)
			if err := stream.RecvMsg(m); err != nil {
				return err
			}
			return srv.(streamServer).Count(stream.Context(), m, &rpc.GenericServerStream[wrapperspb.Int64Value, wrapperspb.Int64Value]{ServerStream: stream})
		},
	}, {
		StreamName:    "Sum",
		QoS:           rpc.QoS1,
		ClientStreams: true,
		Handler: func(srv any, stream rpc.ServerStream) error {
			return srv.(streamServer).Sum(stream.Context(), &rpc.GenericServerStream[wrapperspb.Int64Value, wrapperspb.Int64Value]{ServerStream: stream})
		},
	}, {
		StreamName:    "Chat",
		QoS:           rpc.QoS1,
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(srv any, stream rpc.ServerStream) error {
			return srv.(streamServer).Chat(stream.Context(), &rpc.GenericServerStream[wrapperspb.StringValue, wrapperspb.StringValue]{ServerStream: stream})
		},
	}},
}

// startStreamServer serves svc on a connection of its own.
func startStreamServer(t *testing.T, url string, svc *streamService, opts ...rpc.ServerOption) *rpc.Server {
	t.Helper()
	srv := rpc.NewServer(dial(t, url, rpc.WithClientID(uniqueID("server"))), opts...)
	srv.RegisterService(&streamDesc, svc)
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

// openCount opens Count for n numbers.
func openCount(t *testing.T, ctx context.Context, c *rpc.Client, n int64, opts ...rpc.CallOption) rpc.ServerStreamingClient[wrapperspb.Int64Value] {
	t.Helper()
	cs, err := c.Stub(&streamDesc, "Count").NewStream(ctx, opts...)
	if err != nil {
		t.Fatalf("NewStream: %v", err)
	}
	x := &rpc.GenericClientStream[wrapperspb.Int64Value, wrapperspb.Int64Value]{ClientStream: cs}
	if err := x.SendMsg(wrapperspb.Int64(n)); err != nil {
		t.Fatalf("SendMsg: %v", err)
	}
	if err := x.CloseSend(); err != nil {
		t.Fatalf("CloseSend: %v", err)
	}
	return x
}

// receiveAll reads a Count stream to its end, checking that the numbers
// come in order, each once.
func receiveAll(t *testing.T, stream rpc.ServerStreamingClient[wrapperspb.Int64Value]) (int64, error) {
	t.Helper()
	var n int64
	for {
		m, err := stream.Recv()
		if err != nil {
			return n, err
		}
		if m.GetValue() != n {
			t.Fatalf("message %d is %d: out of order or a copy", n, m.GetValue())
		}
		n++
	}
}

// A server stream delivers every message in order, then io.EOF; headers
// come with the first message, trailers with the final one.
func TestServerStream(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		startStreamServer(t, b.url, &streamService{}, rpc.WithServerID("dev-1"))
		client := newClient(t, b.url)
		stream := openCount(t, testCtx(t), client, 1000, rpc.To("dev-1"))
		header, err := stream.Header()
		if err != nil || header.Get("x-header") != "h" {
			t.Fatalf("Header() = %v, %v; want x-header: h", header, err)
		}
		n, err := receiveAll(t, stream)
		if !errors.Is(err, io.EOF) || n != 1000 {
			t.Fatalf("received %d messages, then %v; want 1000, then io.EOF", n, err)
		}
		if got := stream.Trailer().Get("x-trailer"); got != "t" {
			t.Errorf("trailer x-trailer = %q, want t", got)
		}
		if got := rpc.PendingCalls(client); got != 0 {
			t.Errorf("%d calls still pending after the end", got)
		}

		// The iterator reads the same.
		var sum int64
		for m, err := range rpc.Messages(openCount(t, testCtx(t), client, 10, rpc.To("dev-1"))) {
			if err != nil {
				t.Fatal(err)
			}
			sum += m.GetValue()
		}
		if sum != 45 {
			t.Errorf("sum over the iterator = %d, want 45", sum)
		}
	})
}

// A handler's error ends the stream after the messages it sent, with its
// code, message and metadata; a handler that sends nothing and fails gets
// its error to the caller as well.
func TestServerStreamError(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		svc := &streamService{count: func(ctx context.Context, req *wrapperspb.Int64Value, stream rpc.ServerStreamingServer[wrapperspb.Int64Value]) error {
			for i := range req.GetValue() {
				if err := stream.Send(wrapperspb.Int64(i)); err != nil {
					return err
				}
			}
			e := rpc.NewError(rpc.NotFound, errors.New("no more\nnumbers 100%"))
			e.Meta().Set("x-why", "gone")
			return e
		}}
		startStreamServer(t, b.url, svc, rpc.WithServerID("dev-1"))
		client := newClient(t, b.url)
		for _, sent := range []int64{3, 0} {
			n, err := receiveAll(t, openCount(t, testCtx(t), client, sent, rpc.To("dev-1")))
			e := wantCode(t, err, rpc.NotFound)
			if n != sent || e.Message() != "no more\nnumbers 100%" || e.Meta().Get("x-why") != "gone" || !rpc.IsWireError(e) {
				t.Errorf("after %d messages: %d received, then %v (metadata %v)", sent, n, e, e.Meta())
			}
		}
	})
}

// A consumer that reads one message at a time never lets the server send
// more than the window ahead of it: every time the server waits for
// credit, it has sent at most received + window messages, and it did use
// the window.
func TestStreamFlowControl(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		const window, total = 4, 40
		var sent, waitingFor atomic.Int64
		waitingFor.Store(-1)
		svc := &streamService{count: func(ctx context.Context, req *wrapperspb.Int64Value, stream rpc.ServerStreamingServer[wrapperspb.Int64Value]) error {
			for i := range int64(total) {
				if err := stream.Send(wrapperspb.Int64(i)); err != nil {
					return err
				}
				sent.Add(1)
			}
			return nil
		}}
		startStreamServer(t, b.url, svc, rpc.WithServerID("dev-1"), rpc.WithCreditWaitHook(func(seq int64) { waitingFor.Store(seq) }))
		client := newClient(t, b.url, rpc.WithStreamWindow(window))
		stream := openCount(t, testCtx(t), client, 0, rpc.To("dev-1"))
		// The runtime grants credit in steps of half the window: after
		// reading k messages the credit is k + window once that is half a
		// window more than granted before.
		granted := int64(window)
		for received := int64(0); received < total; received++ {
			// The server runs until it waits for the credit granted, or
			// is done; beyond the credit it must never go.
			want := min(granted, total)
			waitFor(t, func() bool {
				s := sent.Load()
				return s > want || (s == want && (s == total || waitingFor.Load() == s))
			})
			if s := sent.Load(); s-received > window || s > want {
				t.Fatalf("the server sent %d messages while the consumer had read %d and granted %d: the window is %d", s, received, granted, window)
			}
			m, err := stream.Recv()
			if err != nil || m.GetValue() != received {
				t.Fatalf("message %d: %v, %v", received, m, err)
			}
			if credit := received + 1 + window; credit-granted >= window/2 {
				granted = credit
			}
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("after %d messages: %v, want io.EOF", total, err)
		}
	})
}

// Cancelling the stream's context, CloseReceive and breaking out of the
// iterator each send the cancel message: the handler's context ends with
// Canceled long before the deadline.
func TestStreamCancelReachesTheHandler(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		handlerDone := make(chan error, 3)
		svc := &streamService{count: func(ctx context.Context, req *wrapperspb.Int64Value, stream rpc.ServerStreamingServer[wrapperspb.Int64Value]) error {
			if err := stream.Send(wrapperspb.Int64(0)); err != nil {
				return err
			}
			<-ctx.Done()
			handlerDone <- ctx.Err()
			return ctx.Err()
		}}
		srv := startStreamServer(t, b.url, svc, rpc.WithServerID("dev-1"))
		client := newClient(t, b.url)
		ways := []struct {
			name   string
			cancel func(ctx context.CancelFunc, stream rpc.ServerStreamingClient[wrapperspb.Int64Value]) error
		}{
			{"context", func(cancel context.CancelFunc, stream rpc.ServerStreamingClient[wrapperspb.Int64Value]) error {
				cancel()
				_, err := stream.Recv()
				return err
			}},
			{"CloseReceive", func(_ context.CancelFunc, stream rpc.ServerStreamingClient[wrapperspb.Int64Value]) error {
				_ = stream.CloseReceive()
				_, err := stream.Recv()
				return err
			}},
		}
		for i, way := range ways {
			deadline, stop := context.WithTimeout(context.Background(), time.Minute)
			ctx, cancel := context.WithCancel(deadline)
			stream := openCount(t, ctx, client, 1, rpc.To("dev-1"))
			if m, err := stream.Recv(); err != nil || m.GetValue() != 0 {
				t.Fatalf("%s: first message %v, %v", way.name, m, err)
			}
			if err := way.cancel(cancel, stream); rpc.CodeOf(err) != rpc.Canceled {
				t.Errorf("%s: Recv after cancelling = %v, want Canceled", way.name, err)
			}
			select {
			case err := <-handlerDone:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("%s: the handler's context ended with %v, want Canceled", way.name, err)
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("%s: the cancel message did not reach the handler", way.name)
			}
			waitFor(t, func() bool { return srv.Stats().Dropped[rpc.DropCanceled] == uint64(i+1) })
			cancel()
			stop()
		}
		// Breaking out of the iterator cancels too.
		for range rpc.Messages(openCount(t, testCtx(t), client, 1, rpc.To("dev-1"))) {
			break
		}
		select {
		case <-handlerDone:
		case <-time.After(20 * time.Second):
			t.Fatal("breaking out of the iterator did not cancel the stream")
		}
	})
}

// A client stream sends many messages, half-closes and gets one response;
// a bidirectional stream answers each message as it comes.
func TestClientAndBidiStreams(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		svc := &streamService{}
		startStreamServer(t, b.url, svc, rpc.WithServerID("dev-1"), rpc.WithStreamWindow(8))
		client := newClient(t, b.url)

		cs, err := client.Stub(&streamDesc, "Sum").NewStream(testCtx(t), rpc.To("dev-1"))
		if err != nil {
			t.Fatal(err)
		}
		sum := &rpc.GenericClientStream[wrapperspb.Int64Value, wrapperspb.Int64Value]{ClientStream: cs}
		for i := range int64(100) {
			if err := sum.Send(wrapperspb.Int64(i)); err != nil {
				t.Fatalf("Send %d: %v", i, err)
			}
		}
		if got, err := sum.CloseAndRecv(); err != nil || got.GetValue() != 4950 {
			t.Fatalf("CloseAndRecv = %v, %v; want 4950", got, err)
		}

		cs, err = client.Stub(&streamDesc, "Chat").NewStream(testCtx(t), rpc.To("dev-1"))
		if err != nil {
			t.Fatal(err)
		}
		chat := &rpc.GenericClientStream[wrapperspb.StringValue, wrapperspb.StringValue]{ClientStream: cs}
		for i := range 50 {
			msg := fmt.Sprint("hello ", i)
			if err := chat.Send(wrapperspb.String(msg)); err != nil {
				t.Fatalf("Send %d: %v", i, err)
			}
			if got, err := chat.Recv(); err != nil || got.GetValue() != "re: "+msg {
				t.Fatalf("Recv %d = %v, %v", i, got, err)
			}
		}
		if err := chat.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := chat.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("Recv after CloseSend = %v, want io.EOF", err)
		}
	})
}

// Closing the Client ends its open streams with Canceled, and the stream
// is cancelled on the wire: the handler's context ends.
func TestStreamClientClose(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		ended := make(chan error, 1)
		startStreamServer(t, b.url, &streamService{count: blockingCount(ended)}, rpc.WithServerID("dev-1"))
		client := rpc.NewClient(dial(t, b.url, rpc.WithClientID(uniqueID("caller"))))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		stream := openCount(t, ctx, client, 1, rpc.To("dev-1"))
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		if err := client.Close(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		_, err := stream.Recv()
		wantCode(t, err, rpc.Canceled)
		select {
		case cause := <-ended:
			if !errors.Is(cause, context.Canceled) {
				t.Errorf("the handler's context ended with %v, want Canceled", cause)
			}
		case <-ctx.Done():
			t.Fatal("the handler's context did not end after the client closed")
		}
		if n := rpc.PendingCalls(client); n != 0 {
			t.Errorf("%d calls pending after Close", n)
		}
	})
}
