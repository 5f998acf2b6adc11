package rpc_test

import (
	"context"
	"testing"
	"time"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// A request the broker did not deliver (PUBACK 0x10) is republished with
// backoff and then served once.
func TestRetryAfterNoMatchingSubscribers(t *testing.T) {
	b := newTestbroker(t)
	svc := &echoService{}
	startServer(t, b.url, svc, rpc.WithServerID("dev-1"))
	client := newClient(t, b.url, rpc.WithRetry(rpc.RetryPolicy{MaxAttempts: 4, InitialBackoff: 10 * time.Millisecond}))
	b.tb.RejectPublishes("mqttrpc/+/dev-1/+", 2, 0x10)
	if got, err := echo(testCtx(t), client, "retried", rpc.To("dev-1")); err != nil || got != "retried" {
		t.Fatalf("call: %q, %v", got, err)
	}
	if n := svc.calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times", n)
	}
	// Past MaxAttempts the call fails with the last error.
	b.tb.RejectPublishes("mqttrpc/+/dev-1/+", 4, 0x10)
	_, err := echo(testCtx(t), client, "given up", rpc.To("dev-1"))
	wantCode(t, err, rpc.Unavailable)
	b.tb.ClearFaults()
}

// Retries never outlive the deadline.
func TestRetryStopsAtDeadline(t *testing.T) {
	b := newTestbroker(t)
	client := newClient(t, b.url, rpc.WithRetry(rpc.RetryPolicy{MaxAttempts: 1000, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}))
	b.tb.RejectPublishes("mqttrpc/#", 0, 0x10)
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := echo(ctx, client, "x", rpc.To("dev-1"))
	if code := rpc.CodeOf(err); code != rpc.Unavailable && code != rpc.DeadlineExceeded {
		t.Fatalf("code %v (%v), want Unavailable or DeadlineExceeded", code, err)
	}
	if d := time.Since(start); d > 600*time.Millisecond {
		t.Fatalf("call lasted %v past its 400ms deadline", d)
	}
}
