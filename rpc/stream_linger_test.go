package rpc_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/internal/rpctest"
	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// The final message of a stream lost with a connection (docs/protocol.md,
// "After the handler returns"): the server keeps it after its handler
// returned and sends it again when the caller (or the server itself)
// resumes, so that the caller gets the handler's status, not Unavailable
// by its liveness.

// isFinal reports whether p is a stream's final message.
func isFinal(p *paho.Publish) bool {
	up := userProps(p)
	return up["mqttrpc-status"] != "" && up["mqttrpc-seq"] != ""
}

// lingerCase is a way a handler ends, and what its caller must see.
type lingerCase struct {
	name string
	err  error // the handler's
	code rpc.Code
}

var lingerCases = []lingerCase{
	{name: "ok", code: rpc.OK},
	{name: "error", err: rpc.Errorf(rpc.NotFound, "the thing is gone"), code: rpc.NotFound},
}

// checkEnd checks the end of a stream against what its handler returned.
func checkEnd(t *testing.T, c lingerCase, err error, trailer rpc.Metadata) {
	t.Helper()
	if c.code == rpc.OK {
		if !errors.Is(err, io.EOF) {
			t.Fatalf("end of the stream: %v, want io.EOF (the handler returned nil)", err)
		}
	} else {
		e := wantCode(t, err, c.code)
		if e.Message() != "the thing is gone" || !rpc.IsWireError(e) {
			t.Fatalf("end of the stream: %v, want the handler's own error from the server", err)
		}
	}
	if got := trailer.Get("x-trailer"); got != "t" {
		t.Errorf("trailer x-trailer = %q, want \"t\"", got)
	}
}

// The caller's connection is cut before the final message reaches it: the
// handler waits until the cut (the proxy then refuses the caller), returns,
// and an observer subscribed to the caller's response topic shows that the
// final message went out while the caller was away. The caller comes back
// and gets every message once and the handler's status; one handler ran.
// "first message": the final is the stream's only message (the handler
// fails at once), so the caller has no answer yet when it comes back.
func TestStreamFinalAfterCallerReconnects(t *testing.T) {
	t.Parallel()
	for _, c := range lingerCases {
		for _, sent := range []int64{5, 0} {
			name := c.name
			if sent == 0 {
				name += "/first message"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				eachBroker(t, func(t *testing.T, b *broker) {
					proxy := rpctest.NewProxy(t, b.url)
					started, proceed := make(chan struct{}), make(chan struct{})
					var handlers atomic.Int64
					svc := &streamService{count: func(ctx context.Context, req *wrapperspb.Int64Value, stream rpc.ServerStreamingServer[wrapperspb.Int64Value]) error {
						handlers.Add(1)
						for i := range sent {
							if err := stream.Send(wrapperspb.Int64(i)); err != nil {
								return err
							}
						}
						close(started)
						select {
						case <-proceed:
						case <-ctx.Done():
							return ctx.Err()
						}
						stream.SetTrailer(rpc.Metadata{"x-trailer": {"t"}})
						return c.err
					}}
					id := uniqueID("dev")
					startStreamServer(t, b.url, svc, rpc.WithServerID(id))
					client := rpc.NewClient(dial(t, proxy.URL(), rpc.WithClientID(uniqueID("caller"))), rpc.WithStreamKeepalive(2*time.Second))
					t.Cleanup(func() { _ = client.Close(context.Background()) })
					observer := newObserver(t, b.url, client.ResponseTopic())

					stream := openCount(t, shortCtx(t, time.Minute), client, 0, rpc.To(id))
					for i := range sent {
						m, err := stream.Recv()
						if err != nil || m.GetValue() != i {
							t.Fatalf("message %d: %v, %v", i, m, err)
						}
					}
					wait(t, started, "the handler")
					proxy.Refuse(true)
					if cut := proxy.CutAll(); cut != 1 {
						t.Fatalf("cut %d connections, want 1", cut)
					}
					close(proceed)
					observer.until(t, "the final message", isFinal)
					proxy.Refuse(false)

					_, err := stream.Recv()
					checkEnd(t, c, err, stream.Trailer())
					if h := handlers.Load(); h != 1 {
						t.Errorf("%d handlers ran for one stream", h)
					}
				})
			})
		}
	}
}

// The server's connection is cut as its handler returns: the final
// message cannot be published, and the server sends it when its
// connection is back. The handler waits until the server's Conn has seen
// its connection go down (the proxy refuses it until the handler has
// returned).
func TestStreamFinalAfterServerReconnects(t *testing.T) {
	t.Parallel()
	for _, c := range lingerCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			eachBroker(t, func(t *testing.T, b *broker) {
				proxy := rpctest.NewProxy(t, b.url)
				started, proceed, returned := make(chan struct{}), make(chan struct{}), make(chan struct{})
				svc := &streamService{count: func(ctx context.Context, req *wrapperspb.Int64Value, stream rpc.ServerStreamingServer[wrapperspb.Int64Value]) error {
					defer close(returned)
					for i := range int64(5) {
						if err := stream.Send(wrapperspb.Int64(i)); err != nil {
							return err
						}
					}
					close(started)
					select {
					case <-proceed:
					case <-ctx.Done():
						return ctx.Err()
					}
					stream.SetTrailer(rpc.Metadata{"x-trailer": {"t"}})
					return c.err
				}}
				id := uniqueID("dev")
				downOpt, serverDown := connDown()
				srv := rpc.NewServer(dial(t, proxy.URL(), rpc.WithClientID(uniqueID("server")), downOpt), rpc.WithServerID(id))
				srv.RegisterService(&streamDesc, svc)
				if err := srv.Start(testCtx(t)); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
				client := newClient(t, b.url, rpc.WithStreamKeepalive(2*time.Second))

				stream := openCount(t, shortCtx(t, time.Minute), client, 0, rpc.To(id))
				for i := range int64(5) {
					m, err := stream.Recv()
					if err != nil || m.GetValue() != i {
						t.Fatalf("message %d: %v, %v", i, m, err)
					}
				}
				wait(t, started, "the handler")
				proxy.Refuse(true)
				if cut := proxy.CutAll(); cut != 1 {
					t.Fatalf("cut %d connections, want 1", cut)
				}
				wait(t, serverDown, "the server's connection to go down")
				close(proceed)
				wait(t, returned, "the handler to return")
				proxy.Refuse(false)

				_, err := stream.Recv()
				checkEnd(t, c, err, stream.Trailer())
			})
		})
	}
}

// A stream kept after its handler returned does not hold Shutdown up: it
// is dropped, at once, though its caller never came back for its final
// message.
func TestStreamLingerEndsAtShutdown(t *testing.T) {
	t.Parallel()
	b := newTestbroker(t)
	proxy := rpctest.NewProxy(t, b.url)
	proceed, returned := make(chan struct{}), make(chan struct{})
	svc := &streamService{count: func(ctx context.Context, req *wrapperspb.Int64Value, stream rpc.ServerStreamingServer[wrapperspb.Int64Value]) error {
		defer close(returned)
		if err := stream.Send(wrapperspb.Int64(0)); err != nil {
			return err
		}
		<-proceed
		return nil
	}}
	srv := rpc.NewServer(dial(t, b.url, rpc.WithClientID(uniqueID("server"))), rpc.WithServerID("dev-1"))
	srv.RegisterService(&streamDesc, svc)
	if err := srv.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	// The default keepalive: the stream would be kept for 15 s.
	client := rpc.NewClient(dial(t, proxy.URL(), rpc.WithClientID(uniqueID("caller"))))
	t.Cleanup(func() { _ = client.Close(context.Background()) })
	stream := openCount(t, shortCtx(t, time.Minute), client, 0, rpc.To("dev-1"))
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	proxy.Refuse(true)
	proxy.CutAll()
	close(proceed)
	wait(t, returned, "the handler to return")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Shutdown took %v with a stream kept for its final message", d)
	}
}

// finalSeen is a slog.Handler for testbroker's packet log: it closes seen
// when the broker receives a stream's final message on the caller's
// response topic.
type finalSeen struct {
	topic atomic.Pointer[string] // the caller's response topic, once known
	seen  chan struct{}
	once  sync.Once
}

func (h *finalSeen) Enabled(context.Context, slog.Level) bool { return true }
func (h *finalSeen) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *finalSeen) WithGroup(string) slog.Handler            { return h }
func (h *finalSeen) Handle(_ context.Context, r slog.Record) error {
	want := h.topic.Load()
	if r.Message != "packet received" || want == nil {
		return nil
	}
	var topic, status bool
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "topic":
			topic = a.Value.String() == *want
		case "user.mqttrpc-status":
			status = true
		}
		return true
	})
	if topic && status {
		h.once.Do(func() { close(h.seen) })
	}
	return nil
}

// The broker loses the final message while the caller stays connected
// (testbroker drops every publish to the caller's response topic until
// its packet log shows the final message arrived): the caller's next
// keepalive shows the lingering server what it lacks, and the server
// sends it again. The caller gets the handler's status, not Unavailable.
func TestStreamFinalLostByBroker(t *testing.T) {
	t.Parallel()
	for _, c := range lingerCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			log := &finalSeen{seen: make(chan struct{})}
			tb := testbroker.Start(t, testbroker.WithPacketLog(slog.New(log)))
			proceed := make(chan struct{})
			svc := &streamService{count: func(ctx context.Context, req *wrapperspb.Int64Value, stream rpc.ServerStreamingServer[wrapperspb.Int64Value]) error {
				for i := range int64(3) {
					if err := stream.Send(wrapperspb.Int64(i)); err != nil {
						return err
					}
				}
				select {
				case <-proceed:
				case <-ctx.Done():
					return ctx.Err()
				}
				stream.SetTrailer(rpc.Metadata{"x-trailer": {"t"}})
				return c.err
			}}
			startStreamServer(t, tb.URL(), svc, rpc.WithServerID("dev-1"))
			client := newClient(t, tb.URL(), rpc.WithStreamKeepalive(time.Second))
			topic := client.ResponseTopic()
			log.topic.Store(&topic)
			stream := openCount(t, shortCtx(t, time.Minute), client, 0, rpc.To("dev-1"))
			for i := range int64(3) {
				if m, err := stream.Recv(); err != nil || m.GetValue() != i {
					t.Fatalf("message %d: %v, %v", i, m, err)
				}
			}
			tb.DropPublishes(topic, 0)
			close(proceed)
			wait(t, log.seen, "the final message at the broker")
			tb.ClearFaults()
			_, err := stream.Recv()
			checkEnd(t, c, err, stream.Trailer())
		})
	}
}

// A copy of the open of a lingering stream starts no second handler, even
// when the deduplication of requests has evicted the open's entry (a
// cache of one entry here, taken by another stream meanwhile): the caller,
// whose stream had no answer yet, publishes its open again after its
// reconnection, and gets the first handler's status.
func TestStreamLingeringOpenCopyStartsNothing(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		proxy := rpctest.NewProxy(t, b.url)
		started, proceed := make(chan struct{}), make(chan struct{})
		var handlers atomic.Int64
		svc := &streamService{count: func(ctx context.Context, req *wrapperspb.Int64Value, stream rpc.ServerStreamingServer[wrapperspb.Int64Value]) error {
			if req.GetValue() == 0 {
				return nil // the other stream
			}
			if handlers.Add(1) == 1 {
				close(started)
			}
			<-proceed
			return rpc.Errorf(rpc.NotFound, "the thing is gone")
		}}
		id := uniqueID("dev")
		startStreamServer(t, b.url, svc, rpc.WithServerID(id), rpc.WithDedupLimits(1, 1<<20))
		client := rpc.NewClient(dial(t, proxy.URL(), rpc.WithClientID(uniqueID("caller"))), rpc.WithStreamKeepalive(2*time.Second))
		t.Cleanup(func() { _ = client.Close(context.Background()) })
		observer := newObserver(t, b.url, client.ResponseTopic())

		stream := openCount(t, shortCtx(t, time.Minute), client, 1, rpc.To(id))
		wait(t, started, "the handler")
		proxy.Refuse(true)
		proxy.CutAll()
		close(proceed)
		observer.until(t, "the final message", isFinal)
		// Another stream's open takes the one entry of the cache.
		other := newClient(t, b.url)
		if n, err := receiveAll(t, openCount(t, shortCtx(t, time.Minute), other, 0, rpc.To(id))); n != 0 || !errors.Is(err, io.EOF) {
			t.Fatalf("the other stream: %d messages, %v", n, err)
		}
		proxy.Refuse(false)

		_, err := stream.Recv()
		if e := wantCode(t, err, rpc.NotFound); e.Message() != "the thing is gone" {
			t.Fatalf("end of the stream: %v", err)
		}
		if h := handlers.Load(); h != 1 {
			t.Errorf("%d handlers ran for one stream", h)
		}
	})
}
