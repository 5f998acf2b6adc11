package rpc_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// A slow method cannot take every worker: other methods keep being served.
func TestSlowMethodDoesNotStallOthers(t *testing.T) {
	b := newTestbroker(t)
	release := make(chan struct{})
	svc := &echoService{}
	svc.handle = func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return in, nil
	}
	srv := startServer(t, b.url, svc, rpc.WithServerID("dev-1"), rpc.WithConcurrency(4), rpc.WithQueueSize(100))
	client := newClient(t, b.url)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if _, err := echo(ctx, client, "slow", rpc.To("dev-1")); err != nil {
				t.Errorf("slow call: %v", err)
			}
		})
	}
	waitFor(t, func() bool { return svc.calls.Load() == 3 }) // 3 of 4 workers: the method's limit
	pong := new(wrapperspb.StringValue)
	if err := client.Call(ctx, echoServiceName, "Ping", wrapperspb.String(""), pong, rpc.To("dev-1")); err != nil || pong.GetValue() != "pong" {
		t.Fatalf("Ping while Echo is saturated: %q, %v", pong.GetValue(), err)
	}
	close(release)
	wg.Wait()
	if n := svc.calls.Load(); n != 10 {
		t.Fatalf("Echo ran %d times, want 10", n)
	}
	if st := srv.Stats(); st.Dropped[rpc.DropOverload] != 0 {
		t.Fatalf("overload drops %d", st.Dropped[rpc.DropOverload])
	}
}

func TestPayloadLimits(t *testing.T) {
	b := newTestbroker(t)
	svc := &echoService{}
	svc.handle = func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		if in.GetValue() == "grow" {
			return wrapperspb.String(strings.Repeat("x", 2000)), nil
		}
		return in, nil
	}
	srv := startServer(t, b.url, svc, rpc.WithServerID("dev-1"), rpc.WithMaxPayload(1000))
	ctx := testCtx(t)

	// The client's own limit stops a large request before it is published.
	small := newClient(t, b.url, rpc.WithMaxPayload(100))
	_, err := echo(ctx, small, strings.Repeat("x", 200), rpc.To("dev-1"))
	wantCode(t, err, rpc.ResourceExhausted)
	if svc.calls.Load() != 0 {
		t.Fatal("oversized request reached the handler")
	}

	client := newClient(t, b.url, rpc.WithMaxPayload(20<<20))
	_, err = echo(ctx, client, strings.Repeat("x", 10<<20), rpc.To("dev-1")) // 10 MB reaches the server
	if e := wantCode(t, err, rpc.ResourceExhausted); !strings.Contains(e.Message(), "limit") {
		t.Errorf("message %q", e.Message())
	}
	_, err = echo(ctx, client, "grow", rpc.To("dev-1"))
	wantCode(t, err, rpc.ResourceExhausted)
	if got, err := echo(ctx, client, "fine", rpc.To("dev-1")); err != nil || got != "fine" {
		t.Fatalf("after oversized calls: %q, %v", got, err)
	}
	if n := srv.Stats().Dropped[rpc.DropTooLarge]; n != 1 {
		t.Errorf("too_large count %d, want 1", n)
	}
}
