package rpc_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// Every server answers a broadcast; the caller gets each answer with the
// server's ID, errors included, until the deadline.
func TestBroadcast(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		for i := 1; i <= 3; i++ {
			id := fmt.Sprintf("dev-%d", i)
			svc := &echoService{}
			svc.handle = func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
				if id == "dev-3" {
					return nil, rpc.Errorf(rpc.FailedPrecondition, "dev-3 is in maintenance")
				}
				return wrapperspb.String(in.GetValue() + " from " + id), nil
			}
			startServer(t, b.url, svc, rpc.WithServerID(id))
		}
		// A server that opted out of broadcasts stays silent.
		quiet := &echoService{}
		startServer(t, b.url, quiet, rpc.WithServerID("dev-quiet"), rpc.WithoutBroadcast())

		client := newClient(t, b.url)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start := time.Now()
		var got []string
		for r := range client.Broadcast(ctx, echoServiceName, "Echo", wrapperspb.String("hi"), func() any { return new(wrapperspb.StringValue) }) {
			if r.Err != nil {
				got = append(got, r.Target+": "+rpc.CodeOf(r.Err).String())
				continue
			}
			got = append(got, r.Target+": "+r.Response.(*wrapperspb.StringValue).GetValue())
		}
		if d := time.Since(start); d < 900*time.Millisecond || d > 3*time.Second {
			t.Errorf("broadcast ended after %v, want at its 1s deadline", d)
		}
		sort.Strings(got)
		want := []string{"dev-1: hi from dev-1", "dev-2: hi from dev-2", "dev-3: FailedPrecondition"}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("replies %q, want %q", got, want)
		}
		if quiet.calls.Load() != 0 {
			t.Errorf("server without broadcast ran %d times", quiet.calls.Load())
		}
	})
}

// Breaking out of the loop ends the broadcast early.
func TestBroadcastStopsWhenLoopBreaks(t *testing.T) {
	b := newTestbroker(t)
	startServer(t, b.url, &echoService{}, rpc.WithServerID("dev-1"))
	client := newClient(t, b.url)
	start := time.Now()
	for r := range client.Broadcast(testCtx(t), echoServiceName, "Echo", wrapperspb.String("x"), func() any { return new(wrapperspb.StringValue) }) {
		if r.Err != nil || r.Target != "dev-1" {
			t.Fatalf("reply %+v", r)
		}
		break
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
	if n := rpc.PendingCalls(client); n != 0 {
		t.Fatalf("%d pending after the loop", n)
	}
}

// Gateways without a server ID send no mqttrpc-target: each of their
// answers is yielded rather than counted once. An interceptor that publishes
// a broadcast twice leaves no routing entry behind.
func TestBroadcastGatewaysAndInterceptors(t *testing.T) {
	b := newTestbroker(t)
	for range 2 {
		startServer(t, b.url, &echoService{}, rpc.WithGateway())
	}
	twice := rpc.UnaryInterceptorFunc(func(next rpc.UnaryFunc) rpc.UnaryFunc {
		return func(ctx context.Context, req any) (any, error) {
			if _, err := next(ctx, req); err != nil {
				return nil, err
			}
			return next(ctx, req)
		}
	})
	for _, tc := range []struct {
		name string
		opts []rpc.ClientOption
		want int
	}{
		{"plain", nil, 2},
		{"published twice", []rpc.ClientOption{rpc.WithInterceptors(twice)}, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := newClient(t, b.url, tc.opts...)
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			n := 0
			for r := range client.Broadcast(ctx, echoServiceName, "Echo", wrapperspb.String("hi"), func() any { return new(wrapperspb.StringValue) }) {
				if r.Err != nil || r.Target != "" {
					t.Errorf("reply %+v, want an answer without target", r)
				}
				n++
			}
			if n != tc.want {
				t.Errorf("%d replies from 2 gateways, want %d", n, tc.want)
			}
			if p := rpc.PendingCalls(client); p != 0 {
				t.Errorf("%d routing entries left after the broadcast", p)
			}
		})
	}
}
