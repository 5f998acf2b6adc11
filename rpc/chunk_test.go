package rpc_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/codec"
	"github.com/mqttrpc/mqttrpc/internal/mosquittotest"
	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// Chunking (docs/protocol.md, "Chunking") on brokers whose Maximum Packet
// Size is 64 KiB: Mosquitto with max_packet_size, testbroker with
// WithMaxPacketSize. Without chunks, every message here would get its
// sender disconnected.

const (
	packetLimit = 65536
	bigMessage  = 10 << 20 // 10 MiB
	bigLimit    = 16 << 20 // WithMaxPayload for the 10 MiB messages
)

// eachLimitedBroker runs f against testbroker and Mosquitto, both with a
// Maximum Packet Size of packetLimit, in parallel subtests.
func eachLimitedBroker(t *testing.T, f func(t *testing.T, b *broker)) {
	t.Helper()
	t.Run("testbroker", func(t *testing.T) {
		t.Parallel()
		f(t, newLimitedTestbroker(t))
	})
	t.Run("mosquitto", func(t *testing.T) {
		t.Parallel()
		mq := mosquittotest.Start(t, mosquittotest.WithConfig("max_packet_size "+strconv.Itoa(packetLimit)))
		f(t, &broker{name: "mosquitto", url: mq.URL(), mq: mq})
	})
}

func newLimitedTestbroker(t *testing.T) *broker {
	tb := testbroker.Start(t, testbroker.WithMaxPacketSize(packetLimit))
	return &broker{name: "testbroker", url: tb.URL(), tb: tb}
}

// pattern returns n bytes that differ from chunk to chunk (a misplaced
// chunk shows), the same for the same seed.
func pattern(seed uint64, n int) []byte {
	b := make([]byte, n)
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 1})
	_, _ = rng.Read(b)
	return b
}

// flip is what Echo answers: the request behind a prefix. (Copies are
// single calls, which the race detector checks at once, unlike a loop
// over 10 MiB.)
func flip(b []byte) []byte {
	return append([]byte("re:"), b...)
}

// chunkService is a hand-written service with large messages: Echo
// (unary, the request's bytes behind a prefix), Make (unary, n bytes), Download
// (server streaming: one message of n bytes, then a small one) and Upload
// (client streaming: the SHA-256 of every byte received).
type chunkService struct {
	echoes  atomic.Int64
	uploads atomic.Int64
	// download, if set, is what Download sends, after which it waits for
	// its context to end instead of sending "end".
	download []byte
	// received, if set, hears the size of every message Upload receives.
	received chan int
	// failWith, if set, makes Make fail with this metadata.
	failWith rpc.Metadata
}

type chunkServer interface {
	Echo(context.Context, *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error)
	Make(context.Context, *wrapperspb.Int64Value) (*wrapperspb.BytesValue, error)
	Download(*wrapperspb.Int64Value, rpc.ServerStreamingServer[wrapperspb.BytesValue]) error
	Upload(rpc.ClientStreamingServer[wrapperspb.BytesValue, wrapperspb.BytesValue]) error
}

func (s *chunkService) Echo(ctx context.Context, in *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error) {
	s.echoes.Add(1)
	if call, ok := rpc.CallFromContext(ctx); ok {
		call.ResponseMetadata().Set("x-echoed", strconv.Itoa(len(in.GetValue())))
	}
	return wrapperspb.Bytes(flip(in.GetValue())), nil
}

func (s *chunkService) Make(ctx context.Context, in *wrapperspb.Int64Value) (*wrapperspb.BytesValue, error) {
	if s.failWith != nil {
		e := rpc.Errorf(rpc.FailedPrecondition, "failing with large metadata")
		for k, vs := range s.failWith {
			e.Meta()[k] = vs
		}
		return nil, e
	}
	return wrapperspb.Bytes(pattern(uint64(in.GetValue()), int(in.GetValue()))), nil
}

func (s *chunkService) Download(in *wrapperspb.Int64Value, stream rpc.ServerStreamingServer[wrapperspb.BytesValue]) error {
	stream.SetHeader(rpc.Metadata{"x-size": {strconv.FormatInt(in.GetValue(), 10)}})
	if s.download != nil {
		if err := stream.Send(wrapperspb.Bytes(s.download)); err != nil {
			return err
		}
		<-stream.Context().Done()
		return stream.Context().Err()
	}
	if err := stream.Send(wrapperspb.Bytes(pattern(uint64(in.GetValue()), int(in.GetValue())))); err != nil {
		return err
	}
	return stream.Send(wrapperspb.Bytes([]byte("end")))
}

func (s *chunkService) Upload(stream rpc.ClientStreamingServer[wrapperspb.BytesValue, wrapperspb.BytesValue]) error {
	s.uploads.Add(1)
	sum := sha256.New()
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(wrapperspb.Bytes(sum.Sum(nil)))
		}
		if err != nil {
			return err
		}
		sum.Write(m.GetValue())
		if s.received != nil {
			s.received <- len(m.GetValue())
		}
	}
}

const chunkServiceName = "test.v1.ChunkService"

var chunkDesc = rpc.ServiceDesc{
	ServiceName: chunkServiceName,
	HandlerType: (*chunkServer)(nil),
	Methods: []rpc.MethodDesc{{
		MethodName: "Echo",
		QoS:        rpc.QoS1,
		NewRequest: func() any { return new(wrapperspb.BytesValue) },
		Handler: func(srv any, ctx context.Context, req any) (any, error) {
			return srv.(chunkServer).Echo(ctx, req.(*wrapperspb.BytesValue))
		},
	}, {
		MethodName: "Make",
		QoS:        rpc.QoS1,
		NewRequest: func() any { return new(wrapperspb.Int64Value) },
		Handler: func(srv any, ctx context.Context, req any) (any, error) {
			return srv.(chunkServer).Make(ctx, req.(*wrapperspb.Int64Value))
		},
	}},
	Streams: []rpc.StreamDesc{{
		StreamName:    "Download",
		QoS:           rpc.QoS1,
		ServerStreams: true,
		Handler: func(srv any, stream rpc.ServerStream) error {
			m := new(wrapperspb.Int64Value)
			if err := stream.RecvMsg(m); err != nil {
				return err
			}
			return srv.(chunkServer).Download(m, &rpc.GenericServerStream[wrapperspb.Int64Value, wrapperspb.BytesValue]{ServerStream: stream})
		},
	}, {
		StreamName:    "Upload",
		QoS:           rpc.QoS1,
		ClientStreams: true,
		Handler: func(srv any, stream rpc.ServerStream) error {
			return srv.(chunkServer).Upload(&rpc.GenericServerStream[wrapperspb.BytesValue, wrapperspb.BytesValue]{ServerStream: stream})
		},
	}},
}

// startChunkServer serves svc as dev-1 on a connection of its own.
func startChunkServer(t *testing.T, url string, svc *chunkService, opts ...rpc.ServerOption) *rpc.Server {
	t.Helper()
	srv := rpc.NewServer(dial(t, url, rpc.WithClientID(uniqueID("server"))), append([]rpc.ServerOption{rpc.WithServerID("dev-1")}, opts...)...)
	srv.RegisterService(&chunkDesc, svc)
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

func chunkEcho(ctx context.Context, c *rpc.Client, value []byte, opts ...rpc.CallOption) ([]byte, error) {
	out := new(wrapperspb.BytesValue)
	err := c.Call(ctx, chunkServiceName, "Echo", wrapperspb.Bytes(value), out, append([]rpc.CallOption{rpc.To("dev-1")}, opts...)...)
	return out.GetValue(), err
}

func chunkMake(ctx context.Context, c *rpc.Client, n int64, opts ...rpc.CallOption) ([]byte, error) {
	out := new(wrapperspb.BytesValue)
	err := c.Call(ctx, chunkServiceName, "Make", wrapperspb.Int64(n), out, append([]rpc.CallOption{rpc.To("dev-1")}, opts...)...)
	return out.GetValue(), err
}

// chunkWatcher is a bare client that watches the chunks on a filter.
type chunkWatcher struct {
	mu     sync.Mutex
	chunks []*paho.Publish
}

func watchChunks(t *testing.T, url, filter string) *chunkWatcher {
	t.Helper()
	w := &chunkWatcher{}
	stop, done := make(chan struct{}), make(chan struct{})
	// Registered before the client's own cleanup, so that it runs after
	// it: the client's handler waits for its messages to be read until
	// it has disconnected.
	t.Cleanup(func() {
		close(stop)
		<-done
	})
	raw := newRawClient(t, url, uniqueID("watcher"))
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if p := raw.Next(50 * time.Millisecond); p != nil && hasUserProperty(p, "mqttrpc-chunk") {
				w.mu.Lock()
				w.chunks = append(w.chunks, p)
				w.mu.Unlock()
			}
		}
	}()
	raw.SubscribeTo(t, filter)
	return w
}

func (w *chunkWatcher) seen() []*paho.Publish {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]*paho.Publish(nil), w.chunks...)
}

// A 10 MiB request and its 10 MiB answer cross a broker that takes 64 KiB
// packets, byte for byte, with their metadata; the request's chunks on the
// wire are as docs/protocol.md has them.
func TestChunkedUnaryRoundTrip(t *testing.T) {
	eachLimitedBroker(t, func(t *testing.T, b *broker) {
		svc := &chunkService{}
		startChunkServer(t, b.url, svc, rpc.WithMaxPayload(bigLimit))
		client := newClient(t, b.url, rpc.WithMaxPayload(bigLimit))
		request := pattern(1, bigMessage)
		requestTopic := "mqttrpc/" + chunkServiceName + "/dev-1/Echo"
		watcher := watchChunks(t, b.url, requestTopic)

		var md rpc.Metadata
		start := time.Now()
		got, err := chunkEcho(testCtx(t), client, request, rpc.WithMetadata(rpc.Metadata{"x-req": {"r"}}), rpc.ResponseMetadata(&md))
		if err != nil {
			t.Fatalf("%s: %v", b.name, err)
		}
		t.Logf("%s: 10 MiB each way in %v", b.name, time.Since(start).Round(time.Millisecond))
		if !bytes.Equal(got, flip(request)) {
			t.Fatalf("%s: the answer of %d bytes is not the request's %d behind re:", b.name, len(got), len(request))
		}
		if md.Get("x-echoed") != strconv.Itoa(bigMessage) {
			t.Errorf("%s: response metadata %v", b.name, md)
		}
		if n := svc.echoes.Load(); n != 1 {
			t.Errorf("%s: the handler ran %d times", b.name, n)
		}

		// The request's chunks, seen from outside.
		wire, _ := proto.Marshal(wrapperspb.Bytes(request))
		var chunks []*paho.Publish
		waitFor(t, func() bool {
			chunks = watcher.seen()
			return len(chunks) > 0 && len(chunks) == chunkCount(t, chunks[0])
		})
		seen := map[int]bool{}
		for _, c := range chunks {
			up := userProps(c)
			index, count, size := parseChunk(t, up["mqttrpc-chunk"])
			if size != len(wire) || count != len(chunks) || seen[index] {
				t.Fatalf("%s: chunk %q of %d chunks of a %d-byte request", b.name, up["mqttrpc-chunk"], len(chunks), len(wire))
			}
			seen[index] = true
			if c.Properties.ContentType != "application/vnd.mqttrpc.chunk" || c.Properties.PayloadFormat != nil {
				t.Errorf("%s: chunk %d: ContentType %q", b.name, index, c.Properties.ContentType)
			}
			if c.Properties.ResponseTopic != client.ResponseTopic() || len(c.Properties.CorrelationData) != 16 || c.Properties.MessageExpiry == nil {
				t.Errorf("%s: chunk %d lacks ResponseTopic, CorrelationData or expiry", b.name, index)
			}
			_, hasTimeout := up["mqttrpc-timeout"]
			if (index == 0) != (up["x-req"] == "r") || (index == 0) != hasTimeout {
				t.Errorf("%s: chunk %d: user properties %v; the message's belong on chunk 0 only", b.name, index, up)
			}
			if start := index * len(chunks[0].Payload); index != count-1 && !bytes.Equal(c.Payload, wire[start:start+len(c.Payload)]) {
				// (chunk 0's length is L only when it is not the last.)
				if idx0 := chunkIndex(t, chunks[0]); idx0 != count-1 {
					t.Errorf("%s: chunk %d holds the wrong bytes", b.name, index)
				}
			}
		}
		t.Logf("%s: the request went as %d chunks", b.name, len(chunks))
	})
}

func parseChunk(t *testing.T, v string) (index, count, size int) {
	t.Helper()
	parts := strings.Split(v, "/")
	if len(parts) != 3 {
		t.Fatalf("mqttrpc-chunk %q", v)
	}
	n := make([]int, 3)
	for i, p := range parts {
		var err error
		if n[i], err = strconv.Atoi(p); err != nil {
			t.Fatalf("mqttrpc-chunk %q", v)
		}
	}
	return n[0], n[1], n[2]
}

func chunkCount(t *testing.T, p *paho.Publish) int {
	_, count, _ := parseChunk(t, userProps(p)["mqttrpc-chunk"])
	return count
}

func chunkIndex(t *testing.T, p *paho.Publish) int {
	index, _, _ := parseChunk(t, userProps(p)["mqttrpc-chunk"])
	return index
}

// A server stream sends a 10 MiB message and a client stream receives
// one, through a broker that takes 64 KiB packets.
func TestChunkedStreams(t *testing.T) {
	eachLimitedBroker(t, func(t *testing.T, b *broker) {
		svc := &chunkService{}
		startChunkServer(t, b.url, svc, rpc.WithMaxPayload(bigLimit))
		client := newClient(t, b.url, rpc.WithMaxPayload(bigLimit))

		t.Run("server sends", func(t *testing.T) {
			cs, err := client.Stub(&chunkDesc, "Download").NewStream(testCtx(t), rpc.To("dev-1"))
			if err != nil {
				t.Fatal(err)
			}
			stream := &rpc.GenericClientStream[wrapperspb.Int64Value, wrapperspb.BytesValue]{ClientStream: cs}
			if err := stream.Send(wrapperspb.Int64(bigMessage)); err != nil {
				t.Fatal(err)
			}
			header, err := stream.Header()
			if err != nil || header.Get("x-size") != strconv.Itoa(bigMessage) {
				t.Fatalf("%s: header %v, %v", b.name, header, err)
			}
			m, err := stream.Recv()
			if err != nil {
				t.Fatalf("%s: Recv: %v", b.name, err)
			}
			if !bytes.Equal(m.GetValue(), pattern(bigMessage, bigMessage)) {
				t.Fatalf("%s: the stream's message of %d bytes differs from the %d sent", b.name, len(m.GetValue()), bigMessage)
			}
			if m, err := stream.Recv(); err != nil || string(m.GetValue()) != "end" {
				t.Fatalf("%s: second message %v, %v", b.name, m, err)
			}
			if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
				t.Fatalf("%s: end of stream %v, want io.EOF", b.name, err)
			}
		})
		t.Run("server receives", func(t *testing.T) {
			cs, err := client.Stub(&chunkDesc, "Upload").NewStream(testCtx(t), rpc.To("dev-1"))
			if err != nil {
				t.Fatal(err)
			}
			stream := &rpc.GenericClientStream[wrapperspb.BytesValue, wrapperspb.BytesValue]{ClientStream: cs}
			data := pattern(2, bigMessage)
			for _, part := range [][]byte{[]byte("head"), data, []byte("tail")} {
				if err := stream.Send(wrapperspb.Bytes(part)); err != nil {
					t.Fatalf("%s: Send: %v", b.name, err)
				}
			}
			sum, err := stream.CloseAndRecv()
			if err != nil {
				t.Fatalf("%s: %v", b.name, err)
			}
			want := sha256.Sum256(append(append([]byte("head"), data...), "tail"...))
			if !bytes.Equal(sum.GetValue(), want[:]) {
				t.Fatalf("%s: the server received other bytes than were sent", b.name)
			}
		})
	})
}

// A request over the server's WithMaxPayload is refused with
// ResourceExhausted at its first chunk, an answer over the client's fails
// the call so too; the server keeps serving, chunked calls included.
func TestChunkedOverMaxPayload(t *testing.T) {
	eachLimitedBroker(t, func(t *testing.T, b *broker) {
		srv := startChunkServer(t, b.url, &chunkService{}, rpc.WithMaxPayload(1<<20))
		client := newClient(t, b.url, rpc.WithMaxPayload(bigLimit))
		ctx := shortCtx(t, 20*time.Second)

		_, err := chunkEcho(ctx, client, pattern(3, 2<<20))
		if e := wantCode(t, err, rpc.ResourceExhausted); !rpc.IsWireError(e) || !strings.Contains(e.Message(), "limit") {
			t.Fatalf("%s: %v; want the server's ResourceExhausted naming its limit", b.name, err)
		}
		if got := srv.Stats().Dropped[rpc.DropTooLarge]; got != 1 {
			t.Errorf("%s: %d requests counted too large, want 1", b.name, got)
		}

		small := newClient(t, b.url, rpc.WithMaxPayload(256<<10))
		_, err = chunkMake(ctx, small, 512<<10)
		if e := wantCode(t, err, rpc.ResourceExhausted); rpc.IsWireError(e) {
			t.Fatalf("%s: %v; want the client's own ResourceExhausted", b.name, err)
		}

		// Still serving: a chunked request within the limit, and a small one.
		request := pattern(4, 900<<10)
		if got, err := chunkEcho(ctx, client, request); err != nil || !bytes.Equal(got, flip(request)) {
			t.Fatalf("%s: chunked call after the refusal: %d bytes, %v", b.name, len(got), err)
		}
		if got, err := chunkEcho(ctx, client, []byte("small")); err != nil || string(got) != string(flip([]byte("small"))) {
			t.Fatalf("%s: small call after the refusal: %v", b.name, err)
		}
	})
}

// What cannot go in chunks is refused with ResourceExhausted and never
// sent: a request to _any (a share group would deal its chunks out), a
// request whose metadata alone is over the limit. An error answer whose
// metadata does not fit is replaced by the server's ResourceExhausted,
// and the server keeps its connection.
func TestChunkedRefusals(t *testing.T) {
	eachLimitedBroker(t, func(t *testing.T, b *broker) {
		svc := &chunkService{failWith: rpc.Metadata{"x-huge": {strings.Repeat("m", 2*packetLimit)}}}
		startChunkServer(t, b.url, svc)
		client := newClient(t, b.url)
		ctx := shortCtx(t, 20*time.Second)

		_, err := chunkEcho(ctx, client, pattern(5, 200<<10), rpc.ToAny())
		if e := wantCode(t, err, rpc.ResourceExhausted); rpc.IsWireError(e) || !strings.Contains(e.Message(), "_any") {
			t.Fatalf("%s: %v", b.name, err)
		}
		_, err = chunkEcho(ctx, client, []byte("x"), rpc.WithMetadata(rpc.Metadata{"x-huge": {strings.Repeat("m", 2*packetLimit)}}))
		if e := wantCode(t, err, rpc.ResourceExhausted); rpc.IsWireError(e) {
			t.Fatalf("%s: %v", b.name, err)
		}
		_, err = chunkMake(ctx, client, 10)
		if e := wantCode(t, err, rpc.ResourceExhausted); !rpc.IsWireError(e) || !strings.Contains(e.Message(), "Maximum Packet Size") {
			t.Fatalf("%s: %v; want the server's ResourceExhausted in place of its answer", b.name, err)
		}
		if got, err := chunkEcho(ctx, client, []byte("after")); err != nil || string(got) != string(flip([]byte("after"))) {
			t.Fatalf("%s: call after the refusals: %v", b.name, err)
		}
	})
}

// Every chunk delivered twice, in either direction: the call succeeds
// byte for byte, and the handler runs once.
func TestChunkedDuplicates(t *testing.T) {
	t.Parallel()
	b := newLimitedTestbroker(t)
	svc := &chunkService{}
	startChunkServer(t, b.url, svc)
	client := newClient(t, b.url)
	b.tb.DuplicatePublishes("mqttrpc/"+chunkServiceName+"/dev-1/+", 0)
	b.tb.DuplicatePublishes(client.ResponseTopic(), 0)
	request := pattern(6, 1<<20)
	got, err := chunkEcho(testCtx(t), client, request)
	if err != nil || !bytes.Equal(got, flip(request)) {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
	if n := svc.echoes.Load(); n != 1 {
		t.Errorf("the handler ran %d times", n)
	}
	cs, err := client.Stub(&chunkDesc, "Upload").NewStream(testCtx(t), rpc.To("dev-1"))
	if err != nil {
		t.Fatal(err)
	}
	upload := &rpc.GenericClientStream[wrapperspb.BytesValue, wrapperspb.BytesValue]{ClientStream: cs}
	if err := upload.Send(wrapperspb.Bytes(request)); err != nil {
		t.Fatal(err)
	}
	sum, err := upload.CloseAndRecv()
	want := sha256.Sum256(request)
	if err != nil || !bytes.Equal(sum.GetValue(), want[:]) {
		t.Fatalf("upload: %v", err)
	}
	if n := svc.uploads.Load(); n != 1 {
		t.Errorf("the upload's handler ran %d times", n)
	}
}

// One chunk lost by the broker: a unary call ends with DeadlineExceeded at
// its deadline (the server drops the incomplete request, and counts it);
// a stream's receiver, missing the message, asks for it again by its
// liveness and the sender sends all its chunks again (docs/protocol.md,
// "Resuming a stream"). Nobody sees a corrupted message, and the server
// keeps serving.
func TestChunkedLoss(t *testing.T) {
	t.Parallel()
	t.Run("request chunk", func(t *testing.T) {
		t.Parallel()
		b := newLimitedTestbroker(t)
		svc := &chunkService{}
		srv := startChunkServer(t, b.url, svc)
		client := newClient(t, b.url)
		b.tb.DropPublishes("mqttrpc/"+chunkServiceName+"/dev-1/Echo", 1)
		_, err := chunkEcho(shortCtx(t, 1500*time.Millisecond), client, pattern(7, 1<<20))
		wantCode(t, err, rpc.DeadlineExceeded)
		waitFor(t, func() bool { return srv.Stats().Dropped[rpc.DropIncomplete] == 1 })
		if n := svc.echoes.Load(); n != 0 {
			t.Errorf("the handler ran %d times on an incomplete request", n)
		}
		if got, err := chunkEcho(testCtx(t), client, []byte("after")); err != nil || string(got) != string(flip([]byte("after"))) {
			t.Fatalf("call after the loss: %v", err)
		}
	})
	t.Run("answer chunk", func(t *testing.T) {
		t.Parallel()
		b := newLimitedTestbroker(t)
		startChunkServer(t, b.url, &chunkService{})
		client := newClient(t, b.url)
		b.tb.DropPublishes(client.ResponseTopic(), 1)
		_, err := chunkMake(shortCtx(t, 1500*time.Millisecond), client, 1<<20)
		wantCode(t, err, rpc.DeadlineExceeded)
		if got, err := chunkMake(testCtx(t), client, 1<<20); err != nil || !bytes.Equal(got, pattern(1<<20, 1<<20)) {
			t.Fatalf("call after the loss: %v", err)
		}
	})
	t.Run("server stream chunk", func(t *testing.T) {
		t.Parallel()
		b := newLimitedTestbroker(t)
		// One message and nothing else, so that the one publish dropped
		// is one of its chunks.
		startChunkServer(t, b.url, &chunkService{download: pattern(11, 1<<20)})
		client := newClient(t, b.url, rpc.WithStreamKeepalive(300*time.Millisecond))
		b.tb.DropPublishes(client.ResponseTopic(), 1)
		cs, err := client.Stub(&chunkDesc, "Download").NewStream(testCtx(t), rpc.To("dev-1"))
		if err != nil {
			t.Fatal(err)
		}
		stream := &rpc.GenericClientStream[wrapperspb.Int64Value, wrapperspb.BytesValue]{ClientStream: cs}
		if err := stream.Send(wrapperspb.Int64(1 << 20)); err != nil {
			t.Fatal(err)
		}
		m, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv: %v; want the message sent again", err)
		}
		if !bytes.Equal(m.GetValue(), pattern(11, 1<<20)) {
			t.Fatalf("received a message of %d bytes that differs from the one sent", len(m.GetValue()))
		}
	})
	t.Run("client stream chunk", func(t *testing.T) {
		t.Parallel()
		b := newLimitedTestbroker(t)
		svc := &chunkService{received: make(chan int, 4)}
		startChunkServer(t, b.url, svc)
		client := newClient(t, b.url, rpc.WithStreamKeepalive(300*time.Millisecond))
		cs, err := client.Stub(&chunkDesc, "Upload").NewStream(testCtx(t), rpc.To("dev-1"))
		if err != nil {
			t.Fatal(err)
		}
		upload := &rpc.GenericClientStream[wrapperspb.BytesValue, wrapperspb.BytesValue]{ClientStream: cs}
		if err := upload.Send(wrapperspb.Bytes([]byte("first"))); err != nil {
			t.Fatal(err)
		}
		<-svc.received // the handler has it: the next publish on the topic is a chunk
		data := pattern(8, 1<<20)
		b.tb.DropPublishes("mqttrpc/"+chunkServiceName+"/dev-1/Upload", 1)
		if err := upload.Send(wrapperspb.Bytes(data)); err != nil {
			t.Fatal(err)
		}
		// The publish dropped is a chunk of the 1 MiB message, or the
		// half-close (tiny), which can overtake the chunks to the broker:
		// either way the server, missing it, asks for it again and the
		// upload completes with the whole message, never a corrupted one.
		got, err := upload.CloseAndRecv()
		if err != nil {
			t.Fatalf("CloseAndRecv: %v; want the lost message sent again", err)
		}
		if len(svc.received) != 1 || <-svc.received != len(data) {
			t.Fatalf("the upload completed, but the handler did not get the whole message")
		}
		want := sha256.Sum256(append([]byte("first"), data...))
		if !bytes.Equal(got.GetValue(), want[:]) {
			t.Errorf("the upload completed with a wrong digest: a message was corrupted")
		}
	})
}

// A foreign client that sends bogus chunks gets a clear answer for each
// message, and the server keeps serving.
func TestChunkedBogusFromOutside(t *testing.T) {
	eachLimitedBroker(t, func(t *testing.T, b *broker) {
		srv := startChunkServer(t, b.url, &chunkService{})
		raw := newRawClient(t, b.url, "raw-chunks")
		const responseTopic = "mqttrpc/responses/raw-chunks"
		raw.SubscribeTo(t, responseTopic)
		topic := "mqttrpc/" + chunkServiceName + "/dev-1/Echo"
		send := func(corr, header string, payload []byte) {
			t.Helper()
			props := &paho.PublishProperties{ResponseTopic: responseTopic, CorrelationData: []byte(corr), ContentType: "application/vnd.mqttrpc.chunk", MessageExpiry: u32(10)}
			if header != "" {
				props.User = paho.UserProperties{{Key: "mqttrpc-chunk", Value: header}}
			}
			if corr == "" {
				props.CorrelationData = nil
			}
			raw.PublishTo(t, topic, props, string(payload))
		}
		answer := func(want rpc.Code) {
			t.Helper()
			p := raw.Next(10 * time.Second)
			if p == nil {
				t.Fatalf("%s: no answer", b.name)
			}
			up := userProps(p)
			if up["mqttrpc-status"] != strconv.Itoa(int(want)) {
				t.Fatalf("%s: answer %v, want status %d (%v)", b.name, up, want, want)
			}
		}
		send("c-range", "5/3/30", make([]byte, 10))
		answer(rpc.InvalidArgument)
		send("c-count", "0/3/30", make([]byte, 10))
		send("c-count", "1/4/30", make([]byte, 10))
		answer(rpc.InvalidArgument)
		send("c-count", "2/3/30", make([]byte, 10)) // a chunk of the refused message: dropped, no answer
		send("c-huge", "0/9000000000000000000/9000000000000000000", make([]byte, 10))
		answer(rpc.ResourceExhausted)
		send("c-lengths", "0/1000000/1000000", make([]byte, 10))
		answer(rpc.InvalidArgument)
		send("c-header", "", make([]byte, 10))
		answer(rpc.InvalidArgument)
		send("", "0/2/20", make([]byte, 10))
		answer(rpc.InvalidArgument)
		if p := raw.Next(200 * time.Millisecond); p != nil {
			t.Errorf("%s: an answer too many: %v", b.name, userProps(p))
		}

		// A well-formed sequence from outside, out of order, works.
		wire, _ := proto.Marshal(wrapperspb.Bytes([]byte("hello, chunks")))
		send("c-ok", "1/2/"+strconv.Itoa(len(wire)), wire[8:])
		send("c-ok", "0/2/"+strconv.Itoa(len(wire)), wire[:8])
		p := raw.Next(10 * time.Second)
		if p == nil || userProps(p)["mqttrpc-status"] != "" {
			t.Fatalf("%s: answer to a good chunked request: %v", b.name, p)
		}
		out := new(wrapperspb.BytesValue)
		if err := proto.Unmarshal(p.Payload, out); err != nil || !bytes.Equal(out.GetValue(), flip([]byte("hello, chunks"))) {
			t.Fatalf("%s: answer %q, %v", b.name, out.GetValue(), err)
		}
		if got := srv.Stats().Dropped[rpc.DropBadChunk]; got != 5 {
			t.Errorf("%s: %d requests counted bad_chunk, want 5", b.name, got)
		}
		client := newClient(t, b.url)
		if got, err := chunkEcho(testCtx(t), client, pattern(9, 300<<10)); err != nil || !bytes.Equal(got, flip(pattern(9, 300<<10))) {
			t.Fatalf("%s: a chunked call after the bogus ones: %v", b.name, err)
		}
	})
}

// Receivers older than chunking look up the ContentType before they
// decode: the chunks' content type is one they do not know, so they refuse
// a chunk instead of running a fragment. The Go client says what such a
// server's answer means.
func TestChunksRefusedByOlderPeers(t *testing.T) {
	registry := codec.NewRegistry()
	for _, ct := range []string{"application/vnd.mqttrpc.chunk", `application/vnd.mqttrpc.chunk; type="application/json"`} {
		if _, ok := registry.Lookup(ct); ok {
			t.Errorf("the codec registry takes the chunk content type %q", ct)
		}
	}
	b := newLimitedTestbroker(t)
	// An older server, as it answered: InvalidArgument, unknown content type.
	old := newRawClient(t, b.url, "old-server")
	old.SubscribeTo(t, "mqttrpc/"+chunkServiceName+"/dev-1/+")
	done := make(chan struct{})
	go func() {
		defer close(done)
		p := old.Next(20 * time.Second)
		if p == nil {
			return
		}
		_, _ = old.Publish(context.Background(), &paho.Publish{QoS: 1, Topic: p.Properties.ResponseTopic, Properties: &paho.PublishProperties{
			CorrelationData: p.Properties.CorrelationData,
			User:            paho.UserProperties{{Key: "mqttrpc-status", Value: "3"}, {Key: "mqttrpc-message", Value: "unknown content type \"" + p.Properties.ContentType + "\": send application/protobuf or application/json"}},
		}})
	}()
	client := newClient(t, b.url)
	_, err := chunkEcho(testCtx(t), client, pattern(10, 200<<10))
	<-done
	if e := wantCode(t, err, rpc.InvalidArgument); !strings.Contains(e.Message(), "does not know") {
		t.Fatalf("%v; want the caller told the server does not know chunks", err)
	}
}

// Two servers answer a broadcast in chunks at once, under one
// CorrelationData: each answer comes back whole, told apart by
// mqttrpc-target on every chunk.
func TestChunkedBroadcastAnswers(t *testing.T) {
	t.Parallel()
	b := newLimitedTestbroker(t)
	startChunkServer(t, b.url, &chunkService{})
	startChunkServer(t, b.url, &chunkService{}, rpc.WithServerID("dev-2"))
	client := newClient(t, b.url)
	const size = 300 << 10
	got := map[string]bool{}
	for reply := range client.Broadcast(testCtx(t), chunkServiceName, "Make", wrapperspb.Int64(size), func() any { return new(wrapperspb.BytesValue) }, rpc.FirstN(2)) {
		if reply.Err != nil {
			t.Fatalf("%s: %v", reply.Target, reply.Err)
		}
		if !bytes.Equal(reply.Response.(*wrapperspb.BytesValue).GetValue(), pattern(size, size)) {
			t.Errorf("%s: the answer differs", reply.Target)
		}
		got[reply.Target] = true
	}
	if !got["dev-1"] || !got["dev-2"] {
		t.Fatalf("answers from %v, want dev-1 and dev-2", got)
	}
}
