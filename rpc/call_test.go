package rpc_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/codec"
	"github.com/mqttrpc/mqttrpc/rpc"
)

func TestUnaryCall(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		svc := &echoService{}
		svc.handle = func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			call, ok := rpc.CallFromContext(ctx)
			if !ok {
				return nil, errors.New("no call in context")
			}
			call.ResponseMetadata().Set("echo-meta", call.RequestMetadata().Get("x-request"))
			return wrapperspb.String(fmt.Sprintf("%s from %s via %s", in.GetValue(), call.Target(), call.Codec())), nil
		}
		startServer(t, b.url, svc, rpc.WithServerID("dev-1"))
		client := newClient(t, b.url)
		for _, cd := range []codec.Codec{codec.Proto, codec.JSON} {
			var md rpc.Metadata
			got, err := echo(testCtx(t), client, "hello", rpc.To("dev-1"), rpc.WithCodec(cd),
				rpc.WithMetadata(rpc.Metadata{"x-request": {"abc"}}), rpc.ResponseMetadata(&md))
			if err != nil {
				t.Fatalf("%s: %v", cd.Name(), err)
			}
			if want := "hello from dev-1 via " + cd.Name(); got != want {
				t.Errorf("%s: got %q, want %q", cd.Name(), got, want)
			}
			if md.Get("echo-meta") != "abc" {
				t.Errorf("%s: response metadata %v, want echo-meta=abc", cd.Name(), md)
			}
		}
	})
}

func TestThousandConcurrentCalls(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		svc := &echoService{}
		startServer(t, b.url, svc, rpc.WithServerID("dev-1"), rpc.WithConcurrency(64), rpc.WithQueueSize(1000))
		client := newClient(t, b.url)
		ctx := testCtx(t)
		const n = 1000
		start := time.Now()
		defer func() { t.Logf("%d concurrent calls in %v", n, time.Since(start)) }()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Go(func() {
				want := fmt.Sprintf("call-%d", i)
				got, err := echo(ctx, client, want, rpc.To("dev-1"))
				switch {
				case err != nil:
					errs <- err
				case got != want:
					errs <- fmt.Errorf("call %d got answer %q", i, got)
				}
			})
		}
		wg.Wait()
		close(errs)
		failed := 0
		for err := range errs {
			if failed++; failed <= 5 {
				t.Error(err)
			}
		}
		if failed > 0 || svc.calls.Load() != n {
			t.Fatalf("%d of %d calls failed; handler ran %d times", failed, n, svc.calls.Load())
		}
	})
}

func TestHandlerErrors(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		svc := &echoService{}
		svc.handle = func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			switch in.GetValue() {
			case "invalid":
				e := rpc.Errorf(rpc.InvalidArgument, "celsius %d out of range", 99)
				e.Meta().Set("x-limit", "35")
				return nil, e
			case "plain":
				return nil, errors.New("disk on fire")
			case "panic":
				panic("boom")
			}
			return in, nil
		}
		startServer(t, b.url, svc, rpc.WithServerID("dev-1"))
		client := newClient(t, b.url)
		ctx := testCtx(t)

		_, err := echo(ctx, client, "invalid", rpc.To("dev-1"))
		e := wantCode(t, err, rpc.InvalidArgument)
		if e.Message() != "celsius 99 out of range" || e.Meta().Get("x-limit") != "35" {
			t.Errorf("error = %q meta %v", e.Message(), e.Meta())
		}
		_, err = echo(ctx, client, "plain", rpc.To("dev-1"))
		if e := wantCode(t, err, rpc.Unknown); e.Message() != "disk on fire" {
			t.Errorf("message %q", e.Message())
		}
		_, err = echo(ctx, client, "panic", rpc.To("dev-1"))
		wantCode(t, err, rpc.Internal)
		// The server keeps serving after a panic.
		if got, err := echo(ctx, client, "still here", rpc.To("dev-1")); err != nil || got != "still here" {
			t.Fatalf("after panic: %q, %v", got, err)
		}
	})
}

func TestUnknownMethodIsUnimplemented(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		startServer(t, b.url, &echoService{}, rpc.WithServerID("dev-1"))
		client := newClient(t, b.url)
		err := client.Call(testCtx(t), echoServiceName, "Nope", wrapperspb.String("x"), new(wrapperspb.StringValue), rpc.To("dev-1"))
		if e := wantCode(t, err, rpc.Unimplemented); !contains(e.Message(), "Nope") {
			t.Errorf("message %q does not name the method", e.Message())
		}
	})
}

func TestNoServer(t *testing.T) {
	t.Run("mosquitto reports no matching subscribers", func(t *testing.T) {
		b := newMosquitto(t)
		client := newClient(t, b.url)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		_, err := echo(ctx, client, "x", rpc.To("nobody"))
		wantCode(t, err, rpc.Unavailable)
		d := time.Since(start)
		if d > time.Second {
			t.Errorf("Unavailable after %v, want well under a second", d)
		}
		t.Logf("Unavailable after %v", d)
	})
	t.Run("testbroker stays silent", func(t *testing.T) {
		b := newTestbroker(t)
		client := newClient(t, b.url)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := echo(ctx, client, "x", rpc.To("nobody"))
		wantCode(t, err, rpc.DeadlineExceeded)
		d := time.Since(start)
		if d < 300*time.Millisecond {
			t.Errorf("DeadlineExceeded after %v, before the deadline", d)
		}
		t.Logf("DeadlineExceeded after %v (deadline 300ms)", d)
	})
}

func TestPubackReasonCodes(t *testing.T) {
	for _, tc := range []struct {
		reason byte
		want   rpc.Code
	}{
		{0x87, rpc.PermissionDenied},
		{0x97, rpc.ResourceExhausted},
		{0x95, rpc.ResourceExhausted},
		{0x10, rpc.Unavailable},
	} {
		t.Run(fmt.Sprintf("0x%02x", tc.reason), func(t *testing.T) {
			t.Parallel()
			b := newTestbroker(t)
			svc := &echoService{}
			startServer(t, b.url, svc, rpc.WithServerID("dev-1"))
			client := newClient(t, b.url)
			b.tb.RejectPublishes("mqttrpc/+/dev-1/+", 1, tc.reason)
			start := time.Now()
			_, err := echo(testCtx(t), client, "x", rpc.To("dev-1"))
			wantCode(t, err, tc.want)
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %v; a PUBACK error must end the call at once", d)
			}
		})
	}
}

func TestDeadline(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		svc := &echoService{}
		deadlines := make(chan time.Duration, 1)
		svc.handle = func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			d, _ := ctx.Deadline()
			deadlines <- time.Until(d)
			<-ctx.Done()
			return nil, ctx.Err()
		}
		startServer(t, b.url, svc, rpc.WithServerID("dev-1"))
		client := newClient(t, b.url)
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := echo(ctx, client, "slow", rpc.To("dev-1"))
		wantCode(t, err, rpc.DeadlineExceeded)
		elapsed := time.Since(start)
		if elapsed < 1400*time.Millisecond || elapsed > 3*time.Second {
			t.Errorf("call ended after %v, want about 1.5s", elapsed)
		}
		if left := <-deadlines; left > 1500*time.Millisecond || left < 500*time.Millisecond {
			t.Errorf("handler's deadline was %v away, want just under 1.5s (from mqttrpc-timeout)", left)
		}
	})
}

func TestCancelRemovesPendingCall(t *testing.T) {
	b := newTestbroker(t)
	svc := &echoService{}
	release := make(chan struct{})
	svc.handle = func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return in, nil
	}
	startServer(t, b.url, svc, rpc.WithServerID("dev-1"))
	defer close(release)
	client := newClient(t, b.url)
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() {
		_, err := echo(ctx, client, "x", rpc.To("dev-1"))
		done <- err
	}()
	waitFor(t, func() bool { return rpc.PendingCalls(client) == 1 })
	cancel()
	wantCode(t, <-done, rpc.Canceled)
	if n := rpc.PendingCalls(client); n != 0 {
		t.Fatalf("%d pending calls after cancel, want 0", n)
	}
}

func TestBadTargetsNeverPublish(t *testing.T) {
	b := newTestbroker(t)
	client := newClient(t, b.url)
	for _, target := range []string{"", "a/b", "dev+", "#", "$SYS", "_secret", "_all", "nul\x00", "bad\xffutf8"} {
		_, err := echo(testCtx(t), client, "x", rpc.To(target))
		wantCode(t, err, rpc.InvalidArgument)
	}
	_, err := echo(testCtx(t), client, "x", rpc.To("dev-1"), rpc.WithMetadata(rpc.Metadata{"mqttrpc-status": {"0"}}))
	wantCode(t, err, rpc.InvalidArgument)
	_, err = echo(testCtx(t), client, "x", rpc.To("dev-1"), rpc.WithQoS(3))
	wantCode(t, err, rpc.InvalidArgument)
}

func TestOverloadIsResourceExhausted(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		svc := &echoService{}
		started := make(chan struct{}, 1)
		release := make(chan struct{})
		svc.handle = func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			started <- struct{}{}
			<-release
			return in, nil
		}
		srv := startServer(t, b.url, svc, rpc.WithServerID("dev-1"), rpc.WithConcurrency(1), rpc.WithQueueSize(0))
		client := newClient(t, b.url)
		ctx := testCtx(t)
		first := make(chan error, 1)
		go func() {
			_, err := echo(ctx, client, "first", rpc.To("dev-1"))
			first <- err
		}()
		<-started
		_, err := echo(ctx, client, "second", rpc.To("dev-1"))
		wantCode(t, err, rpc.ResourceExhausted)
		close(release)
		if err := <-first; err != nil {
			t.Fatalf("first call: %v", err)
		}
		if n := srv.Stats().Dropped[rpc.DropOverload]; n != 1 {
			t.Errorf("overload count = %d, want 1", n)
		}
	})
}

func TestShutdownDrainsRunningCalls(t *testing.T) {
	b := newTestbroker(t)
	svc := &echoService{}
	started := make(chan struct{})
	svc.handle = func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		close(started)
		time.Sleep(300 * time.Millisecond)
		return in, nil
	}
	conn := dial(t, b.url, rpc.WithClientID("dev-1"))
	srv := rpc.NewServer(conn, rpc.WithServerID("dev-1"))
	srv.RegisterService(&echoDesc, svc)
	if err := srv.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	client := newClient(t, b.url)
	result := make(chan error, 1)
	go func() {
		_, err := echo(testCtx(t), client, "x", rpc.To("dev-1"))
		result <- err
	}()
	<-started
	if err := srv.Shutdown(testCtx(t)); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-result; err != nil {
		t.Fatalf("in-flight call during shutdown: %v", err)
	}
	// After shutdown the server is unsubscribed: nobody answers.
	ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	defer cancel()
	_, err := echo(ctx, client, "y", rpc.To("dev-1"))
	wantCode(t, err, rpc.DeadlineExceeded)
	if n := svc.calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

func TestInterceptorsRunInOrder(t *testing.T) {
	b := newTestbroker(t)
	var mu sync.Mutex
	var trace []string
	record := func(name string) rpc.Interceptor {
		return rpc.UnaryInterceptorFunc(func(next rpc.UnaryFunc) rpc.UnaryFunc {
			return func(ctx context.Context, req any) (any, error) {
				call, _ := rpc.CallFromContext(ctx)
				mu.Lock()
				trace = append(trace, fmt.Sprintf("%s:%s:%v", name, call.Procedure(), call.IsClient()))
				mu.Unlock()
				if call.IsClient() {
					call.RequestMetadata().Set("x-from-"+name, "1")
				}
				return next(ctx, req)
			}
		})
	}
	svc := &echoService{}
	svc.handle = func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		call, _ := rpc.CallFromContext(ctx)
		return wrapperspb.String(call.RequestMetadata().Get("x-from-c1") + call.RequestMetadata().Get("x-from-c2")), nil
	}
	startServer(t, b.url, svc, rpc.WithServerID("dev-1"), rpc.WithInterceptors(record("s1"), record("s2")))
	client := newClient(t, b.url, rpc.WithInterceptors(record("c1"), record("c2")))
	got, err := echo(testCtx(t), client, "x", rpc.To("dev-1"))
	if err != nil || got != "11" {
		t.Fatalf("got %q, %v; want metadata set by both client interceptors", got, err)
	}
	p := "/" + echoServiceName + "/Echo"
	want := []string{"c1:" + p + ":true", "c2:" + p + ":true", "s1:" + p + ":false", "s2:" + p + ":false"}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(trace) != fmt.Sprint(want) {
		t.Fatalf("interceptor order %v, want %v", trace, want)
	}
}

// A client interceptor that hands next a context unrelated to the call's
// gets an Internal error rather than a call sent without its options; one
// that derives its context, and calls next twice, works.
func TestInterceptorContext(t *testing.T) {
	b := newTestbroker(t)
	svc := &echoService{}
	startServer(t, b.url, svc, rpc.WithServerID("dev-1"))
	detached := rpc.UnaryInterceptorFunc(func(next rpc.UnaryFunc) rpc.UnaryFunc {
		return func(ctx context.Context, req any) (any, error) {
			return next(context.Background(), req)
		}
	})
	client := newClient(t, b.url, rpc.WithInterceptors(detached))
	_, err := echo(testCtx(t), client, "x", rpc.To("dev-1"))
	if rpc.CodeOf(err) != rpc.Internal || !strings.Contains(err.Error(), "context") {
		t.Fatalf("got %v, want Internal about the context", err)
	}
	if n := svc.calls.Load(); n != 0 {
		t.Fatalf("handler ran %d times for a call that failed before sending", n)
	}

	twice := rpc.UnaryInterceptorFunc(func(next rpc.UnaryFunc) rpc.UnaryFunc {
		return func(ctx context.Context, req any) (any, error) {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if _, err := next(ctx, req); err != nil {
				return nil, err
			}
			return next(context.WithValue(ctx, retryKey{}, 1), req)
		}
	})
	client = newClient(t, b.url, rpc.WithInterceptors(twice))
	for i := range 3 {
		got, err := echo(testCtx(t), client, fmt.Sprint(i), rpc.To("dev-1"))
		if err != nil || got != fmt.Sprint(i) {
			t.Fatalf("call %d: got %q, %v", i, got, err)
		}
	}
	if n := svc.calls.Load(); n != 6 {
		t.Fatalf("handler ran %d times, want 6 (3 calls, each sent twice by the interceptor)", n)
	}
}

func TestShareGroupSpreadsCalls(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		var servers [3]*echoService
		for i := range servers {
			servers[i] = &echoService{}
			startServer(t, b.url, servers[i], rpc.WithServerID(fmt.Sprintf("calc-%d", i)), rpc.WithShareGroup("calc"))
		}
		client := newClient(t, b.url)
		const n = 60
		for i := range n {
			if _, err := echo(testCtx(t), client, fmt.Sprint(i), rpc.ToAny()); err != nil {
				t.Fatal(err)
			}
		}
		total, used := int64(0), 0
		for _, s := range servers {
			total += s.calls.Load()
			if s.calls.Load() > 0 {
				used++
			}
		}
		if total != n || used < 2 {
			t.Fatalf("calls per server %d/%d/%d: want %d in all, spread over at least 2 servers",
				servers[0].calls.Load(), servers[1].calls.Load(), servers[2].calls.Load(), n)
		}
	})
}

func TestGatewaySeesTarget(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		svc := &echoService{}
		svc.handle = func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			call, _ := rpc.CallFromContext(ctx)
			return wrapperspb.String(call.Target()), nil
		}
		startServer(t, b.url, svc, rpc.WithGateway())
		client := newClient(t, b.url)
		for _, dev := range []string{"dev-7", "dev-8"} {
			got, err := echo(testCtx(t), client, "x", rpc.To(dev))
			if err != nil || got != dev {
				t.Fatalf("To(%s): %q, %v", dev, got, err)
			}
		}
	})
}

func TestReconnectAfterBrokerRestart(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		startServer(t, b.url, &echoService{}, rpc.WithServerID("dev-1"))
		client := newClient(t, b.url)
		if _, err := echo(testCtx(t), client, "before", rpc.To("dev-1")); err != nil {
			t.Fatal(err)
		}
		if b.tb != nil {
			if err := b.tb.Restart(); err != nil {
				t.Fatal(err)
			}
		} else {
			b.mq.Restart()
		}
		// Calls fail fast while the connection is down and succeed once
		// both sides have reconnected and resubscribed.
		// Each attempt gets a short deadline: a request published before
		// the server has resubscribed is lost on a broker that does not
		// report 0x10.
		waitFor(t, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err := echo(ctx, client, "after", rpc.To("dev-1"))
			return err == nil
		})
	})
}

// waitFor polls cond until it holds, failing the test after 20 s.

// retryKey marks the second pass of an interceptor that calls next twice.
type retryKey struct{}
