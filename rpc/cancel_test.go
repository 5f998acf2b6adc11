package rpc_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// A caller that cancels sends the cancel message: the handler's context
// ends long before the deadline, and a cancelled request that waits in the
// queue never runs.
func TestCancelReachesTheHandler(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		handlerDone := make(chan error, 4)
		running := make(chan string, 4)
		svc := &echoService{handle: func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			running <- in.GetValue()
			<-ctx.Done()
			handlerDone <- ctx.Err()
			return nil, ctx.Err()
		}}
		srv := startServer(t, b.url, svc, rpc.WithServerID("dev-1"), rpc.WithConcurrency(1))
		client := newClient(t, b.url)

		// The call's deadline is far away: only the cancel message can end
		// the handler within the test's wait.
		deadline, stop := context.WithTimeout(context.Background(), time.Minute)
		defer stop()
		ctx, cancel := context.WithCancel(deadline)
		queuedCtx, cancelQueued := context.WithCancel(deadline)
		results := make(chan error, 2)
		go func() {
			_, err := echo(ctx, client, "running", rpc.To("dev-1"))
			results <- err
		}()
		if got := <-running; got != "running" {
			t.Fatalf("first handler run: %q", got)
		}
		go func() {
			_, err := echo(queuedCtx, client, "queued", rpc.To("dev-1"))
			results <- err
		}()
		waitFor(t, func() bool { return rpc.PendingCalls(client) == 2 })
		cancelQueued()
		if err := <-results; !errors.Is(err, context.Canceled) {
			t.Fatalf("queued call: %v, want Canceled", err)
		}
		waitFor(t, func() bool { return srv.Stats().Dropped[rpc.DropCanceled] == 1 })
		cancel()
		if err := <-results; !errors.Is(err, context.Canceled) {
			t.Fatalf("running call: %v, want Canceled", err)
		}
		select {
		case err := <-handlerDone:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("the handler's context ended with %v, want Canceled", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the cancel message did not reach the handler")
		}
		waitFor(t, func() bool { return srv.Stats().Dropped[rpc.DropCanceled] == 2 })
		// The queued request never ran, and the server serves on.
		svc.handle = nil
		if got, err := echo(testCtx(t), client, "after", rpc.To("dev-1")); err != nil || got != "after" {
			t.Fatalf("after the cancels: %q, %v", got, err)
		}
		if n := svc.calls.Load(); n != 2 {
			t.Errorf("handler ran %d times, want 2 (the queued call was cancelled before it ran)", n)
		}
	})
}
