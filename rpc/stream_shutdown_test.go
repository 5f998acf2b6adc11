package rpc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// Shutdown lets running streams go on until their handlers return
// (docs/protocol.md, "Ending a stream"): a stream's client messages come
// to the server's own topic, which Shutdown keeps until then, while the
// share group's and broadcasts' subscriptions go at once.
func TestShutdownLetsRunningStreamsFinish(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		srv := rpc.NewServer(dial(t, b.url, rpc.WithClientID(uniqueID("server"))), rpc.WithServerID("dev-1"), rpc.WithStreamWindow(8))
		srv.RegisterService(&streamDesc, &streamService{})
		srv.RegisterService(&echoDesc, &echoService{})
		if err := srv.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		client := newClient(t, b.url)
		ctx := testCtx(t)
		cs, err := client.Stub(&streamDesc, "Chat").NewStream(ctx, rpc.To("dev-1"))
		if err != nil {
			t.Fatal(err)
		}
		chat := &rpc.GenericClientStream[wrapperspb.StringValue, wrapperspb.StringValue]{ClientStream: cs}
		exchange := func(i int) {
			t.Helper()
			msg := fmt.Sprint("m", i)
			if err := chat.Send(wrapperspb.String(msg)); err != nil {
				t.Fatalf("Send %d: %v", i, err)
			}
			if got, err := chat.Recv(); err != nil || got.GetValue() != "re: "+msg {
				t.Fatalf("Recv %d = %v, %v", i, got, err)
			}
		}
		exchange(0)

		shutdown := make(chan error, 1)
		go func() { shutdown <- srv.Shutdown(ctx) }()
		// Wait until the broadcast subscription is gone: a broadcast gets
		// no answer any more (while it lasts, the stopping server answers
		// Unavailable). Before, the server's own topic went in the same
		// UNSUBSCRIBE, and the stream stalled from here on.
		for answered := true; answered; {
			bctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			answered = false
			for r := range client.Broadcast(bctx, echoServiceName, "Echo", wrapperspb.String("probe"), func() any { return new(wrapperspb.StringValue) }) {
				// Mosquitto answers a publish nobody subscribes to with
				// 0x10: an error with no Target, not an answer.
				answered = answered || r.Target == "dev-1"
			}
			cancel()
			if ctx.Err() != nil {
				t.Fatal("the broadcast subscription outlived the test's deadline")
			}
		}
		// More than the window (8) both ways: credit and data still reach
		// the handler.
		for i := 1; i <= 40; i++ {
			exchange(i)
		}
		if err := chat.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := chat.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("Recv after CloseSend = %v, want io.EOF", err)
		}
		if err := <-shutdown; err != nil {
			t.Fatalf("Shutdown = %v, want nil once the stream ended", err)
		}
	})
}

// When Shutdown's context ends first, the handlers' contexts end, and the
// final messages of their streams say Unavailable before Shutdown
// returns, so that closing the Conn right after does not lose them: the
// caller learns why at once, not from liveness three keepalives later.
func TestShutdownGivingUpEndsStreamsWithUnavailable(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		conn := dial(t, b.url, rpc.WithClientID(uniqueID("server")))
		srv := rpc.NewServer(conn, rpc.WithServerID("dev-1"))
		ended := make(chan error, 1)
		srv.RegisterService(&streamDesc, &streamService{count: blockingCount(ended)})
		if err := srv.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		// Liveness would end the stream after 3 × 1 min: far beyond the
		// test's deadline.
		client := newClient(t, b.url, rpc.WithStreamKeepalive(time.Minute))
		ctx := testCtx(t)
		stream := openCount(t, ctx, client, 1, rpc.To("dev-1"))
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		if err := srv.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want its context's DeadlineExceeded", err)
		}
		if err := conn.Close(ctx); err != nil {
			t.Fatal(err)
		}
		_, err := stream.Recv()
		if e := wantCode(t, err, rpc.Unavailable); !strings.Contains(e.Message(), "shut down") {
			t.Fatalf("Recv = %v, want the server's final Unavailable (shut down)", err)
		}
	})
}

// A server stream's final message arrives after every data message, as a
// foreign consumer that stops at the final message (docs/protocol.md,
// "Consuming a server stream from another client") needs: the server
// publishes it once the broker has acknowledged the data. Data messages
// are published concurrently and may overtake each other; the final
// overtook some in 5 of 5 runs of a newcomer's consumer before.
func TestStreamFinalArrivesLast(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		startStreamServer(t, b.url, &streamService{}, rpc.WithServerID("dev-1"))
		raw := newRawClient(t, b.url, uniqueID("raw"))
		responseTopic := "mqttrpc/responses/" + uniqueID("raw-consumer")
		raw.SubscribeTo(t, responseTopic)
		const n = 60
		req, err := proto.Marshal(wrapperspb.Int64(n))
		if err != nil {
			t.Fatal(err)
		}
		for run := range 5 {
			corr := fmt.Sprint("final-last-", run)
			if _, err := raw.Publish(testCtx(t), &paho.Publish{Topic: "mqttrpc/" + streamServiceName + "/dev-1/Count", QoS: 1, Payload: req, Properties: &paho.PublishProperties{
				ResponseTopic:   responseTopic,
				CorrelationData: []byte(corr),
				MessageExpiry:   u32(30),
				// No flow control: the window covers the stream.
				User: paho.UserProperties{{Key: "mqttrpc-timeout", Value: "30000"}, {Key: "mqttrpc-window", Value: "1000"}},
			}}); err != nil {
				t.Fatal(err)
			}
			data := 0
			for {
				p := raw.Next(20 * time.Second)
				if p == nil {
					t.Fatalf("run %d: the stream did not end (%d data messages)", run, data)
				}
				if string(p.Properties.CorrelationData) != corr {
					continue // a keepalive of an earlier run
				}
				up := userProps(p)
				if _, final := up["mqttrpc-status"]; final {
					if up["mqttrpc-status"] != "0" || up["mqttrpc-seq"] != fmt.Sprint(n) {
						t.Fatalf("run %d: final message %v, want status 0 and seq %d", run, up, n)
					}
					break
				}
				if up["mqttrpc-seq"] != "" && !hasUserProperty(p, "mqttrpc-credit") {
					data++
				}
			}
			if data != n {
				t.Fatalf("run %d: the final message arrived after %d of the %d data messages", run, data, n)
			}
		}
	})
}
