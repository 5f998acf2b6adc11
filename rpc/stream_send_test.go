package rpc_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// A message the client cannot send (larger than its WithMaxPayload) ends
// the stream, as in grpc-go: later Sends and the answer report it, and
// the handler's context ends (the server is told). Before, the stream
// went on and ended OK without the message.
func TestStreamSendFailureEndsTheStream(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		handlerEnded := make(chan error, 1)
		svc := &streamService{}
		startStreamServer(t, b.url, svc, rpc.WithServerID("dev-1"), rpc.WithInterceptors(handlerEndInterceptor{handlerEnded}))
		client := newClient(t, b.url, rpc.WithMaxPayload(1024))
		cs, err := client.Stub(&streamDesc, "Sum").NewStream(testCtx(t), rpc.To("dev-1"))
		if err != nil {
			t.Fatal(err)
		}
		sum := &rpc.GenericClientStream[wrapperspb.Int64Value, wrapperspb.Int64Value]{ClientStream: cs}
		if err := sum.Send(wrapperspb.Int64(2)); err != nil {
			t.Fatal(err)
		}
		// A StringValue of 2 KiB decodes as nothing Sum knows, but it is
		// refused before that: it is too large to send.
		err = cs.SendMsg(wrapperspb.String(strings.Repeat("x", 2048)))
		wantCode(t, err, rpc.ResourceExhausted)
		if err := sum.Send(wrapperspb.Int64(3)); rpc.CodeOf(err) != rpc.ResourceExhausted {
			t.Errorf("Send after the failed one = %v, want the ResourceExhausted that ended the stream", err)
		}
		got, err := sum.CloseAndRecv()
		if rpc.CodeOf(err) != rpc.ResourceExhausted {
			t.Fatalf("CloseAndRecv = %v, %v; want the ResourceExhausted that ended the stream", got, err)
		}
		select {
		case cause := <-handlerEnded:
			if !errors.Is(cause, context.Canceled) {
				t.Errorf("the handler's context ended with %v, want Canceled (the client's cancel)", cause)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the handler did not end after the stream failed on the client")
		}
	})
}

// handlerEndInterceptor tells ended the cause of each stream handler's
// context once the handler has returned.
type handlerEndInterceptor struct{ ended chan<- error }

func (handlerEndInterceptor) WrapUnary(next rpc.UnaryFunc) rpc.UnaryFunc { return next }

func (handlerEndInterceptor) WrapStreamingClient(next rpc.StreamingClientFunc) rpc.StreamingClientFunc {
	return next
}

func (i handlerEndInterceptor) WrapStreamingHandler(next rpc.StreamingHandlerFunc) rpc.StreamingHandlerFunc {
	return func(ctx context.Context, conn rpc.StreamingHandlerConn) error {
		err := next(ctx, conn)
		i.ended <- context.Cause(ctx)
		return err
	}
}

// rpc.ResponseMetadata works on a stream as on a call: it holds the
// response headers once the first message has been received.
func TestStreamResponseMetadataOption(t *testing.T) {
	b := newTestbroker(t)
	startStreamServer(t, b.url, &streamService{}, rpc.WithServerID("dev-1"))
	client := newClient(t, b.url)
	var md rpc.Metadata
	stream := openCount(t, testCtx(t), client, 2, rpc.To("dev-1"), rpc.ResponseMetadata(&md))
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if got := md["x-header"]; len(got) != 1 || got[0] != "h" {
		t.Fatalf("ResponseMetadata after the first Recv = %v, want x-header: h", md)
	}
}
