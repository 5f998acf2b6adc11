package rpc_test

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/internal/mosquittotest"
	"github.com/mqttrpc/mqttrpc/internal/rpctest"
	"github.com/mqttrpc/mqttrpc/rpc"
)

// A connection cut mid-stream, the caller's or the server's (the proxy
// resets it as a network failure would; the Conn reconnects through it):
// the stream resumes (docs/protocol.md, "Resuming a stream"). The caller
// of a server stream gets every message once, in order, then io.EOF; a
// client stream's server sums every number once. The window is small, so
// the cut falls in the middle of the stream with the handler still
// running.
func TestStreamResumesAfterConnectionCut(t *testing.T) {
	t.Parallel()
	for _, who := range []string{"caller", "server"} {
		t.Run("server stream/"+who, func(t *testing.T) {
			t.Parallel()
			eachBroker(t, func(t *testing.T, b *broker) {
				proxy := rpctest.NewProxy(t, b.url)
				serverURL, callerURL := b.url, proxy.URL()
				if who == "server" {
					serverURL, callerURL = proxy.URL(), b.url
				}
				const total = 400
				var handlers atomic.Int64
				svc := &streamService{count: func(ctx context.Context, req *wrapperspb.Int64Value, stream rpc.ServerStreamingServer[wrapperspb.Int64Value]) error {
					handlers.Add(1)
					for i := range int64(total) {
						if err := stream.Send(wrapperspb.Int64(i)); err != nil {
							return err
						}
					}
					return nil
				}}
				id := uniqueID("dev")
				startStreamServer(t, serverURL, svc, rpc.WithServerID(id))
				client := rpc.NewClient(dial(t, callerURL, rpc.WithClientID(uniqueID("caller"))), rpc.WithStreamKeepalive(time.Second), rpc.WithStreamWindow(8))
				t.Cleanup(func() { _ = client.Close(context.Background()) })
				stream := openCount(t, shortCtx(t, time.Minute), client, 0, rpc.To(id))
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
					if n++; n == 100 {
						if cut := proxy.CutAll(); cut != 1 {
							t.Fatalf("cut %d connections, want 1", cut)
						}
					}
				}
				if !errors.Is(err, io.EOF) || n != total {
					t.Fatalf("after %d messages: %v; want all %d, then io.EOF", n, err, total)
				}
				if h := handlers.Load(); h != 1 {
					t.Errorf("%d handlers ran for one stream", h)
				}
			})
		})
		t.Run("client stream/"+who, func(t *testing.T) {
			t.Parallel()
			eachBroker(t, func(t *testing.T, b *broker) {
				proxy := rpctest.NewProxy(t, b.url)
				serverURL, callerURL := b.url, proxy.URL()
				if who == "server" {
					serverURL, callerURL = proxy.URL(), b.url
				}
				svc := &streamService{}
				id := uniqueID("dev")
				startStreamServer(t, serverURL, svc, rpc.WithServerID(id), rpc.WithStreamWindow(8))
				client := rpc.NewClient(dial(t, callerURL, rpc.WithClientID(uniqueID("caller"))), rpc.WithStreamKeepalive(time.Second))
				t.Cleanup(func() { _ = client.Close(context.Background()) })
				cs, err := client.Stub(&streamDesc, "Sum").NewStream(shortCtx(t, time.Minute), rpc.To(id))
				if err != nil {
					t.Fatal(err)
				}
				sum := &rpc.GenericClientStream[wrapperspb.Int64Value, wrapperspb.Int64Value]{ClientStream: cs}
				const total = 300
				for i := range int64(total) {
					if i == 100 {
						if cut := proxy.CutAll(); cut != 1 {
							t.Fatalf("cut %d connections, want 1", cut)
						}
					}
					if err := sum.Send(wrapperspb.Int64(i)); err != nil {
						t.Fatalf("Send %d: %v", i, err)
					}
				}
				got, err := sum.CloseAndRecv()
				if err != nil {
					t.Fatalf("CloseAndRecv: %v", err)
				}
				if want := int64(total * (total - 1) / 2); got.GetValue() != want {
					t.Fatalf("sum %d, want %d: a number was lost or counted twice", got.GetValue(), want)
				}
				if n := svc.sums.Load(); n != 1 {
					t.Errorf("%d handlers ran for one stream", n)
				}
			})
		})
	}
}

// The broker restarted mid-stream (testbroker, which keeps nothing;
// Mosquitto with persistence and without): both sides lose their
// connection at once, reconnect, and the stream resumes: every message
// once, in order, then io.EOF.
func TestStreamResumesAfterBrokerRestart(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"testbroker", "mosquitto", "mosquitto with persistence"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			var url string
			var restart func()
			switch kind {
			case "testbroker":
				b := newTestbroker(t)
				url, restart = b.url, func() {
					if err := b.tb.Restart(); err != nil {
						t.Fatal(err)
					}
				}
			default:
				var opts []mosquittotest.Option
				if kind != "mosquitto" {
					opts = append(opts, mosquittotest.WithPersistence())
				}
				mq := mosquittotest.Start(t, opts...)
				url, restart = mq.URL(), mq.Restart
			}
			const total = 300
			svc := &streamService{count: func(ctx context.Context, req *wrapperspb.Int64Value, stream rpc.ServerStreamingServer[wrapperspb.Int64Value]) error {
				for i := range int64(total) {
					if err := stream.Send(wrapperspb.Int64(i)); err != nil {
						return err
					}
				}
				return nil
			}}
			id := uniqueID("dev")
			startStreamServer(t, url, svc, rpc.WithServerID(id))
			client := rpc.NewClient(dial(t, url, rpc.WithClientID(uniqueID("caller"))), rpc.WithStreamKeepalive(2*time.Second), rpc.WithStreamWindow(8))
			t.Cleanup(func() { _ = client.Close(context.Background()) })
			stream := openCount(t, shortCtx(t, time.Minute), client, 0, rpc.To(id))
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
				if n++; n == 100 {
					restart()
				}
			}
			if !errors.Is(err, io.EOF) || n != total {
				t.Fatalf("after %d messages: %v; want all %d, then io.EOF", n, err, total)
			}
		})
	}
}
