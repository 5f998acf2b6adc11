package rpc_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/internal/rpctest"
	"github.com/mqttrpc/mqttrpc/rpc"
)

// Resuming streams whose messages go in chunks (docs/protocol.md,
// "Resuming a stream" and "Chunking"): every message here is larger than
// the brokers' Maximum Packet Size (packetLimit), so every message a side
// sends again after a reconnection goes in chunks.

const (
	pieceSize   = 100 << 10 // two chunks under packetLimit
	piecesTotal = 24
	piecesCut   = 12 // the pieces before the cut
)

// piece is message i of a pieces stream: pieceSize bytes that differ from
// piece to piece, so that a misplaced or mixed-up one shows.
func piece(i int64) []byte { return pattern(uint64(1000+i), pieceSize) }

const piecesServiceName = "test.v1.PiecesService"

type piecesServer interface {
	Download(context.Context, rpc.ServerStreamingServer[wrapperspb.BytesValue]) error
	Upload(context.Context, rpc.ClientStreamingServer[wrapperspb.BytesValue, wrapperspb.Int64Value]) error
}

// piecesService is a streaming service of large messages whose handlers
// each test writes: Download (server streaming) and Upload (client
// streaming).
type piecesService struct {
	handlers atomic.Int64
	download func(ctx context.Context, stream rpc.ServerStreamingServer[wrapperspb.BytesValue]) error
	upload   func(ctx context.Context, stream rpc.ClientStreamingServer[wrapperspb.BytesValue, wrapperspb.Int64Value]) error
}

func (s *piecesService) Download(ctx context.Context, stream rpc.ServerStreamingServer[wrapperspb.BytesValue]) error {
	s.handlers.Add(1)
	return s.download(ctx, stream)
}

func (s *piecesService) Upload(ctx context.Context, stream rpc.ClientStreamingServer[wrapperspb.BytesValue, wrapperspb.Int64Value]) error {
	s.handlers.Add(1)
	return s.upload(ctx, stream)
}

var piecesDesc = rpc.ServiceDesc{
	ServiceName: piecesServiceName,
	HandlerType: (*piecesServer)(nil),
	Streams: []rpc.StreamDesc{{
		StreamName:    "Download",
		QoS:           rpc.QoS1,
		ServerStreams: true,
		Handler: func(srv any, stream rpc.ServerStream) error {
			if err := stream.RecvMsg(new(wrapperspb.Int64Value)); err != nil {
				return err
			}
			return srv.(piecesServer).Download(stream.Context(), &rpc.GenericServerStream[wrapperspb.Int64Value, wrapperspb.BytesValue]{ServerStream: stream})
		},
	}, {
		StreamName:    "Upload",
		QoS:           rpc.QoS1,
		ClientStreams: true,
		Handler: func(srv any, stream rpc.ServerStream) error {
			return srv.(piecesServer).Upload(stream.Context(), &rpc.GenericServerStream[wrapperspb.BytesValue, wrapperspb.Int64Value]{ServerStream: stream})
		},
	}},
}

// startPiecesServer serves svc as id on a connection of its own, dialled
// with connOpts; it shuts down at cleanup.
func startPiecesServer(t *testing.T, url, id string, svc *piecesService, connOpts ...rpc.ConnOption) {
	t.Helper()
	conn := dial(t, url, append([]rpc.ConnOption{rpc.WithClientID(uniqueID("server"))}, connOpts...)...)
	srv := rpc.NewServer(conn, rpc.WithServerID(id))
	srv.RegisterService(&piecesDesc, svc)
	if err := srv.Start(testCtx(t)); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
}

// wait waits for ch under the test's generous timeout (against hangs).
func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// connDown returns a ConnOption and a channel that is closed when that
// Conn's connection first goes down.
func connDown() (rpc.ConnOption, <-chan struct{}) {
	down := make(chan struct{})
	var once atomic.Bool
	return rpc.WithOnConnectionDown(func(error) {
		if once.CompareAndSwap(false, true) {
			close(down)
		}
	}), down
}

// observer is a bare MQTT client subscribed to a topic on the broker
// itself, behind no proxy: it shows what the broker had for the topic's
// subscribers. What it receives is taken off its client at once, so that
// it never holds the client (nor the broker) up.
type observer struct {
	msgs chan *paho.Publish
}

// newObserver subscribes an observer to topic; it stops at cleanup.
func newObserver(t *testing.T, url, topic string) *observer {
	t.Helper()
	o := &observer{msgs: make(chan *paho.Publish, 4096)}
	stop, done := make(chan struct{}), make(chan struct{})
	// Registered before the client's: it runs after the client's
	// DISCONNECT, draining until then.
	t.Cleanup(func() {
		close(stop)
		<-done
	})
	rc := newRawClient(t, url, uniqueID("observer"))
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if p := rc.Next(20 * time.Millisecond); p != nil {
				select {
				case o.msgs <- p:
				default: // nobody looks any more
				}
			}
		}
	}()
	rc.SubscribeTo(t, topic)
	return o
}

// until reads what the observer receives until enough says so; it fails
// the test after a generous timeout.
func (o *observer) until(t *testing.T, what string, enough func(p *paho.Publish) bool) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case p := <-o.msgs:
			if enough(p) {
				return
			}
		case <-timeout:
			t.Fatalf("the observer never saw %s", what)
		}
	}
}

// chunksOf returns a function for observer.until that holds once every chunk of
// the stream messages numbered from..to-1 has been seen.
func chunksOf(t *testing.T, from, to int64) func(p *paho.Publish) bool {
	seen := map[int64]map[int]bool{}
	complete := 0
	return func(p *paho.Publish) bool {
		up := userProps(p)
		seq, err := strconv.ParseInt(up["mqttrpc-seq"], 10, 64)
		if err != nil || seq < from || seq >= to || up["mqttrpc-chunk"] == "" {
			return false
		}
		index, count, _ := parseChunk(t, up["mqttrpc-chunk"])
		if seen[seq] == nil {
			seen[seq] = map[int]bool{}
		}
		if !seen[seq][index] {
			seen[seq][index] = true
			if len(seen[seq]) == count {
				complete++
			}
		}
		return complete == int(to-from)
	}
}

// A server stream of chunked messages, cut mid-stream on the caller's or
// the server's side: the pieces the server sends while one side is away
// are lost, and the server sends them again, in chunks, on resumption.
// The caller gets every piece once, in order and intact, then io.EOF; one
// handler runs.
//
// The cut is made deterministic: the handler waits after piecesCut pieces
// until the connection is cut and refused, and sends the rest while it
// is. With the caller cut, an observer subscribed to the caller's
// response topic shows that the broker has had (and the caller missed)
// every chunk of them before the caller may reconnect; with the server
// cut, the server's Conn has seen its connection go down before the
// handler sends them, and the proxy refuses it until all are sent.
func TestStreamResumesChunkedServerStream(t *testing.T) {
	t.Parallel()
	for _, who := range []string{"caller", "server"} {
		t.Run(who+" cut", func(t *testing.T) {
			t.Parallel()
			eachLimitedBroker(t, func(t *testing.T, b *broker) {
				proxy := rpctest.NewProxy(t, b.url)
				serverURL, callerURL := b.url, proxy.URL()
				if who == "server" {
					serverURL, callerURL = proxy.URL(), b.url
				}
				proceed, sent, finish := make(chan struct{}), make(chan struct{}), make(chan struct{})
				svc := &piecesService{download: func(ctx context.Context, stream rpc.ServerStreamingServer[wrapperspb.BytesValue]) error {
					for i := range int64(piecesTotal) {
						if i == piecesCut {
							select {
							case <-proceed:
							case <-ctx.Done():
								return ctx.Err()
							}
						}
						if err := stream.Send(wrapperspb.Bytes(piece(i))); err != nil {
							return err
						}
					}
					close(sent)
					select { // the stream stays open until the caller has every piece
					case <-finish:
						return nil
					case <-ctx.Done():
						return ctx.Err()
					}
				}}
				id := uniqueID("dev")
				downOpt, serverDown := connDown()
				startPiecesServer(t, serverURL, id, svc, downOpt)
				client := rpc.NewClient(dial(t, callerURL, rpc.WithClientID(uniqueID("caller"))), rpc.WithStreamKeepalive(2*time.Second))
				t.Cleanup(func() { _ = client.Close(context.Background()) })
				observer := newObserver(t, b.url, client.ResponseTopic())

				cs, err := client.Stub(&piecesDesc, "Download").NewStream(shortCtx(t, time.Minute), rpc.To(id))
				if err != nil {
					t.Fatal(err)
				}
				stream := &rpc.GenericClientStream[wrapperspb.Int64Value, wrapperspb.BytesValue]{ClientStream: cs}
				if err := stream.Send(wrapperspb.Int64(0)); err != nil {
					t.Fatal(err)
				}
				var n int64
				for {
					m, err := stream.Recv()
					if err != nil {
						if !errors.Is(err, io.EOF) || n != piecesTotal {
							t.Fatalf("after %d pieces: %v; want all %d, then io.EOF", n, err, piecesTotal)
						}
						break
					}
					if !bytes.Equal(m.GetValue(), piece(n)) {
						t.Fatalf("message %d of %d bytes is not piece %d: a gap, a copy or a corrupted message reached the application", n, len(m.GetValue()), n)
					}
					n++
					switch n {
					case piecesCut:
						proxy.Refuse(true)
						if cut := proxy.CutAll(); cut != 1 {
							t.Fatalf("cut %d connections, want 1", cut)
						}
						if who == "server" {
							wait(t, serverDown, "the server's connection to go down")
						}
						close(proceed)
						if who == "caller" {
							observer.until(t, "the pieces sent while the caller was away", chunksOf(t, piecesCut, piecesTotal))
						} else {
							wait(t, sent, "the handler to send every piece")
						}
						proxy.Refuse(false)
					case piecesTotal:
						close(finish)
					}
				}
				if h := svc.handlers.Load(); h != 1 {
					t.Errorf("%d handlers ran for one stream", h)
				}
			})
		})
	}
}

// A client stream (an upload) of chunked messages, cut mid-stream on the
// caller's or the server's side: the caller sends pieces while one side
// is away, and sends them again, in chunks, on resumption. The handler
// gets every piece once, in order and intact; one handler runs.
//
// With the caller cut, the caller's Conn has seen its connection go down
// before it sends the pieces, and the proxy refuses it until all are
// sent; with the server cut, an observer subscribed to the server's topic
// shows that the broker has had (and the server missed) every chunk of
// them before the server may reconnect.
func TestStreamResumesChunkedClientStream(t *testing.T) {
	t.Parallel()
	for _, who := range []string{"caller", "server"} {
		t.Run(who+" cut", func(t *testing.T) {
			t.Parallel()
			eachLimitedBroker(t, func(t *testing.T, b *broker) {
				proxy := rpctest.NewProxy(t, b.url)
				serverURL, callerURL := b.url, proxy.URL()
				if who == "server" {
					serverURL, callerURL = proxy.URL(), b.url
				}
				received := make(chan int64, piecesTotal)
				svc := &piecesService{upload: func(ctx context.Context, stream rpc.ClientStreamingServer[wrapperspb.BytesValue, wrapperspb.Int64Value]) error {
					var n int64
					for {
						m, err := stream.Recv()
						if errors.Is(err, io.EOF) {
							return stream.SendAndClose(wrapperspb.Int64(n))
						}
						if err != nil {
							return err
						}
						if !bytes.Equal(m.GetValue(), piece(n)) {
							return rpc.Errorf(rpc.Internal, "message %d of %d bytes is not piece %d", n, len(m.GetValue()), n)
						}
						n++
						received <- n
					}
				}}
				id := uniqueID("dev")
				startPiecesServer(t, serverURL, id, svc)
				downOpt, callerDown := connDown()
				client := rpc.NewClient(dial(t, callerURL, rpc.WithClientID(uniqueID("caller")), downOpt), rpc.WithStreamKeepalive(2*time.Second))
				t.Cleanup(func() { _ = client.Close(context.Background()) })
				observer := newObserver(t, b.url, "mqttrpc/"+piecesServiceName+"/"+id+"/Upload")

				cs, err := client.Stub(&piecesDesc, "Upload").NewStream(shortCtx(t, time.Minute), rpc.To(id))
				if err != nil {
					t.Fatal(err)
				}
				upload := &rpc.GenericClientStream[wrapperspb.BytesValue, wrapperspb.Int64Value]{ClientStream: cs}
				for i := range int64(piecesTotal) {
					if i == piecesCut {
						for n := int64(0); n < piecesCut; {
							select {
							case n = <-received:
							case <-time.After(30 * time.Second):
								t.Fatalf("the handler has %d pieces, want %d before the cut", n, piecesCut)
							}
						}
						proxy.Refuse(true)
						if cut := proxy.CutAll(); cut != 1 {
							t.Fatalf("cut %d connections, want 1", cut)
						}
						if who == "caller" {
							wait(t, callerDown, "the caller's connection to go down")
						}
					}
					if err := upload.Send(wrapperspb.Bytes(piece(i))); err != nil {
						t.Fatalf("Send %d: %v", i, err)
					}
				}
				if who == "server" {
					observer.until(t, "the pieces sent while the server was away", chunksOf(t, piecesCut, piecesTotal))
				}
				proxy.Refuse(false)
				got, err := upload.CloseAndRecv()
				if err != nil {
					t.Fatalf("CloseAndRecv: %v", err)
				}
				if got.GetValue() != piecesTotal {
					t.Fatalf("the handler got %d pieces, want %d", got.GetValue(), piecesTotal)
				}
				if h := svc.handlers.Load(); h != 1 {
					t.Errorf("%d handlers ran for one stream", h)
				}
			})
		})
	}
}
