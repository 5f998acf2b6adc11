package rpc_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// With a persistent session, a request is acknowledged only after it was
// handled: when the server dies mid-call, the broker redelivers the request
// to the server's next incarnation, and the caller still gets its answer.
func TestRequestRedeliveredAfterServerDies(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		const serverClientID = "dev-1-persistent"
		var firstRuns, secondRuns atomic.Int64
		stuck := make(chan struct{})
		t.Cleanup(func() { close(stuck) })

		dying := &echoService{}
		dying.handle = func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			firstRuns.Add(1)
			<-stuck // dies before answering
			return nil, rpc.Errorf(rpc.Internal, "never sent")
		}
		conn1, err := rpc.Dial(testCtx(t), b.url, rpc.WithClientID(serverClientID), rpc.WithSessionExpiry(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		srv1 := rpc.NewServer(conn1, rpc.WithServerID("dev-1"))
		srv1.RegisterService(&echoDesc, dying)
		if err := srv1.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv1.Shutdown(shortCtx(t, time.Second)) })

		client := newClient(t, b.url)
		result := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			got, err := echo(ctx, client, "survives", rpc.To("dev-1"))
			if err == nil && got != "survives" {
				err = rpc.Errorf(rpc.DataLoss, "got %q", got)
			}
			result <- err
		}()
		waitFor(t, func() bool { return firstRuns.Load() == 1 })
		// The server process dies: its connection goes, the session stays.
		if err := conn1.Close(testCtx(t)); err != nil {
			t.Fatal(err)
		}

		healthy := &echoService{}
		healthy.handle = func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			secondRuns.Add(1)
			return in, nil
		}
		conn2 := dial(t, b.url, rpc.WithClientID(serverClientID), rpc.WithSessionExpiry(time.Minute))
		srv2 := rpc.NewServer(conn2, rpc.WithServerID("dev-1"))
		srv2.RegisterService(&echoDesc, healthy)
		if err := srv2.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv2.Shutdown(testCtx(t)) })

		if err := <-result; err != nil {
			t.Fatalf("call across the server's death: %v", err)
		}
		if firstRuns.Load() != 1 || secondRuns.Load() != 1 {
			t.Fatalf("runs: dying server %d, restarted server %d; want 1 and 1", firstRuns.Load(), secondRuns.Load())
		}
	})
}
