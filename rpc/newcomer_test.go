package rpc_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// Any number of Clients share a Conn: each gets its own answers, and
// closing one leaves the others working.
func TestClientsShareAConn(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		startServer(t, b.url, &echoService{}, rpc.WithServerID("dev-1"))
		conn := dial(t, b.url, rpc.WithClientID(uniqueID("shared")))
		first := rpc.NewClient(conn)
		second := rpc.NewClient(conn, rpc.WithRetry(rpc.RetryPolicy{MaxAttempts: 3}))
		third := rpc.NewClient(conn)
		t.Cleanup(func() {
			_ = second.Close(context.Background())
			_ = third.Close(context.Background())
		})
		ctx := shortCtx(t, 10*time.Second)
		var wg sync.WaitGroup
		for i, c := range []*rpc.Client{first, second, third, first, second, third} {
			wg.Go(func() {
				value := string(rune('a' + i))
				got, err := echo(ctx, c, value, rpc.To("dev-1"))
				if err != nil || got != value {
					t.Errorf("client %d: echo = %q, %v; want %q", i%3, got, err, value)
				}
			})
		}
		wg.Wait()
		if err := first.Close(ctx); err != nil {
			t.Fatalf("Close: %v", err)
		}
		// The other Clients keep the shared response subscription.
		for i, c := range []*rpc.Client{second, third} {
			if got, err := echo(ctx, c, "after", rpc.To("dev-1")); err != nil || got != "after" {
				t.Errorf("client %d after the first closed: %q, %v", i+2, got, err)
			}
		}
		if _, err := echo(ctx, first, "closed", rpc.To("dev-1")); rpc.CodeOf(err) != rpc.Canceled {
			t.Errorf("call on a closed client: %v, want Canceled", err)
		}
	})
}

// The last Client of a Conn to close unsubscribes the response topic; a
// Client made on the Conn afterwards, or while that UNSUBSCRIBE is in
// flight, subscribes again after it and gets its answers.
func TestClientAfterTheLastClosed(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		startServer(t, b.url, &echoService{}, rpc.WithServerID("dev-1"))
		conn := dial(t, b.url, rpc.WithClientID(uniqueID("reopen")))
		ctx := shortCtx(t, 20*time.Second)
		last := rpc.NewClient(conn)
		for i := range 10 {
			if got, err := echo(ctx, last, "x", rpc.To("dev-1")); err != nil || got != "x" {
				t.Fatalf("round %d: %q, %v", i, got, err)
			}
			closed := make(chan error, 1)
			go func(c *rpc.Client) { closed <- c.Close(ctx) }(last)
			last = rpc.NewClient(conn) // races the UNSUBSCRIBE of the one before
			if err := <-closed; err != nil {
				t.Fatalf("round %d: Close: %v", i, err)
			}
		}
		if got, err := echo(ctx, last, "end", rpc.To("dev-1")); err != nil || got != "end" {
			t.Fatalf("last client: %q, %v", got, err)
		}
		if err := last.Close(ctx); err != nil {
			t.Fatal(err)
		}
		again := rpc.NewClient(conn)
		t.Cleanup(func() { _ = again.Close(context.Background()) })
		if got, err := echo(ctx, again, "again", rpc.To("dev-1")); err != nil || got != "again" {
			t.Fatalf("a client after the last closed: %q, %v", got, err)
		}
	})
}

// A Client closed while its call waits ends that call only.
func TestClientCloseEndsOnlyItsCalls(t *testing.T) {
	b := newTestbroker(t)
	release := make(chan struct{})
	svc := &echoService{handle: func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		if in.GetValue() == "slow" {
			<-release
		}
		return in, nil
	}}
	startServer(t, b.url, svc, rpc.WithServerID("dev-1"))
	defer close(release)
	conn := dial(t, b.url, rpc.WithClientID(uniqueID("shared")))
	closing, staying := rpc.NewClient(conn), rpc.NewClient(conn)
	t.Cleanup(func() { _ = staying.Close(context.Background()) })
	ctx := shortCtx(t, 20*time.Second)
	slow := make(chan error, 1)
	go func() {
		_, err := echo(ctx, closing, "slow", rpc.To("dev-1"))
		slow <- err
	}()
	waitFor(t, func() bool { return rpc.PendingCalls(closing) == 1 && svc.calls.Load() == 1 })
	if err := closing.Close(ctx); err != nil {
		t.Fatal(err)
	}
	wantCode(t, <-slow, rpc.Canceled)
	if got, err := echo(ctx, staying, "fast", rpc.To("dev-1")); err != nil || got != "fast" {
		t.Fatalf("the other client: %q, %v", got, err)
	}
}

type validationError struct{}

func (validationError) Error() string { return "never" }

// validate returns a typed nil *rpc.Error: `return nil, validate()` must be
// no error at all.
func validate(ok bool) *rpc.Error {
	if ok {
		return nil
	}
	return rpc.Errorf(rpc.InvalidArgument, "bad")
}

// Nothing a handler returns crashes the server: a typed nil error is no
// error, (nil, nil) is Internal, an error with code OK is Unknown, response
// metadata MQTT cannot carry is Internal.
func TestOddHandlerReturns(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		svc := &echoService{handle: func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			call, _ := rpc.CallFromContext(ctx)
			switch in.GetValue() {
			case "typed-nil":
				return in, validate(true)
			case "typed-nil-only":
				var resp *wrapperspb.StringValue
				return resp, validate(true)
			case "nil-nil":
				return nil, nil
			case "ok-error":
				return nil, rpc.Errorf(rpc.OK, "confused")
			case "bad-metadata":
				call.ResponseMetadata().Set("note", "line\nbreak")
				return in, nil
			case "binary-metadata":
				call.ResponseMetadata().Set("blob-bin", "\x00\xab\xab\xab\n")
				return in, nil
			}
			return in, nil
		}}
		startServer(t, b.url, svc, rpc.WithServerID("dev-1"))
		client := newClient(t, b.url)
		ctx := shortCtx(t, 20*time.Second)

		if got, err := echo(ctx, client, "typed-nil", rpc.To("dev-1")); err != nil || got != "typed-nil" {
			t.Errorf("typed nil *rpc.Error: %q, %v; want the response", got, err)
		}
		_, err := echo(ctx, client, "typed-nil-only", rpc.To("dev-1"))
		if e := wantCode(t, err, rpc.Internal); !contains(e.Message(), "Echo") {
			t.Errorf("nil response: message %q does not name the method", e.Message())
		}
		_, err = echo(ctx, client, "nil-nil", rpc.To("dev-1"))
		wantCode(t, err, rpc.Internal)
		_, err = echo(ctx, client, "ok-error", rpc.To("dev-1"))
		if e := wantCode(t, err, rpc.Unknown); !contains(e.Message(), "confused") {
			t.Errorf("error with code OK: message %q", e.Message())
		}
		_, err = echo(ctx, client, "bad-metadata", rpc.To("dev-1"))
		if e := wantCode(t, err, rpc.Internal); !contains(e.Message(), "note") {
			t.Errorf("bad metadata: message %q does not name the key", e.Message())
		}
		var md rpc.Metadata
		if _, err := echo(ctx, client, "binary-metadata", rpc.To("dev-1"), rpc.ResponseMetadata(&md)); err != nil {
			t.Fatalf("binary metadata: %v", err)
		}
		if got := md.Get("blob-bin"); got != "\x00\xab\xab\xab\n" {
			t.Errorf("binary metadata = %q", got)
		}
		// The server survived all of it.
		if got, err := echo(ctx, client, "still here", rpc.To("dev-1")); err != nil || got != "still here" {
			t.Fatalf("after odd returns: %q, %v", got, err)
		}
	})
}

func TestNilErrorMethods(t *testing.T) {
	var e *rpc.Error
	if e.Code() != rpc.OK || e.Message() != "" || e.Error() != "OK" || e.Meta() != nil || e.Unwrap() != nil {
		t.Errorf("nil *Error: code %v, message %q, error %q, meta %v", e.Code(), e.Message(), e.Error(), e.Meta())
	}
	var err error = validate(true)
	if rpc.CodeOf(err) != rpc.OK {
		t.Errorf("CodeOf(typed nil) = %v, want OK", rpc.CodeOf(err))
	}
	if rpc.IsWireError(err) || rpc.IsWireError(validationError{}) {
		t.Error("IsWireError of a local error")
	}
}

// Errors made from a context wrap the context's error.
func TestContextErrorsWrapTheContext(t *testing.T) {
	b := newTestbroker(t)
	release := make(chan struct{})
	svc := &echoService{handle: func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		<-release
		return in, nil
	}}
	startServer(t, b.url, svc, rpc.WithServerID("dev-1"))
	defer close(release)
	client := newClient(t, b.url)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := echo(ctx, client, "x", rpc.To("dev-1"))
	wantCode(t, err, rpc.DeadlineExceeded)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("errors.Is(%v, context.DeadlineExceeded) = false", err)
	}
	if rpc.IsWireError(err) {
		t.Errorf("a local deadline reads as a wire error")
	}

	ctx, cancel = context.WithCancel(context.Background())
	go func() {
		waitFor(t, func() bool { return rpc.PendingCalls(client) == 1 })
		cancel()
	}()
	_, err = echo(ctx, client, "y", rpc.To("dev-1"))
	wantCode(t, err, rpc.Canceled)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("errors.Is(%v, context.Canceled) = false", err)
	}
}

// A server's error arrives as a wire error.
func TestServerErrorIsWireError(t *testing.T) {
	b := newTestbroker(t)
	svc := &echoService{handle: func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		return nil, rpc.Errorf(rpc.NotFound, "no such thing")
	}}
	startServer(t, b.url, svc, rpc.WithServerID("dev-1"))
	client := newClient(t, b.url)
	_, err := echo(shortCtx(t, 10*time.Second), client, "x", rpc.To("dev-1"))
	wantCode(t, err, rpc.NotFound)
	if !rpc.IsWireError(err) {
		t.Errorf("IsWireError(%v) = false", err)
	}
}

// A ToAny caller learns which member answered.
func TestAnsweredBy(t *testing.T) {
	b := newTestbroker(t)
	startServer(t, b.url, &echoService{}, rpc.WithServerID("member-1"), rpc.WithShareGroup("pool"))
	startServer(t, b.url, &echoService{handle: func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		return nil, rpc.Errorf(rpc.Aborted, "member 2 refuses")
	}}, rpc.WithServerID("member-2"), rpc.WithShareGroup("pool"))
	client := newClient(t, b.url)
	ctx := shortCtx(t, 20*time.Second)
	seen := map[string]bool{}
	for i := 0; i < 40 && len(seen) < 2; i++ {
		var by string
		_, err := echo(ctx, client, "x", rpc.ToAny(), rpc.AnsweredBy(&by))
		switch by {
		case "member-1":
			if err != nil {
				t.Fatalf("member-1 answered %v", err)
			}
		case "member-2":
			wantCode(t, err, rpc.Aborted)
		default:
			t.Fatalf("AnsweredBy = %q (err %v)", by, err)
		}
		seen[by] = true
	}
	if len(seen) != 2 {
		t.Errorf("answers came from %v only", seen)
	}
	var by string
	if _, err := echo(ctx, client, "x", rpc.To("member-1"), rpc.AnsweredBy(&by)); err != nil || by != "member-1" {
		t.Errorf("unicast: AnsweredBy = %q, %v", by, err)
	}
}

// Every request refused for overload is answered ResourceExhausted, however
// large the burst: callers never wait out their deadline for a decision the
// server made at once.
func TestOverloadBurstIsAnswered(t *testing.T) {
	const (
		calls       = 2000
		concurrency = 2
		queue       = 8
	)
	eachBroker(t, func(t *testing.T, b *broker) {
		release := make(chan struct{})
		var releaseOnce sync.Once
		svc := &echoService{handle: func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return in, nil
		}}
		srv := startServer(t, b.url, svc, rpc.WithServerID("dev-1"), rpc.WithConcurrency(concurrency), rpc.WithQueueSize(queue))
		t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
		client := newClient(t, b.url)
		// The deadline is far beyond what answering takes: a call that
		// waits it out was dropped unanswered.
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var exhausted, ok atomic.Int64
		codes := make(chan rpc.Code, calls)
		var wg sync.WaitGroup
		for range calls {
			wg.Go(func() {
				_, err := echo(ctx, client, "x", rpc.To("dev-1"))
				code := rpc.CodeOf(err)
				switch code {
				case rpc.ResourceExhausted:
					if exhausted.Add(1) == calls-concurrency-queue {
						releaseOnce.Do(func() { close(release) })
					}
				case rpc.OK:
					ok.Add(1)
				}
				codes <- code
			})
		}
		wg.Wait()
		close(codes)
		counts := map[rpc.Code]int{}
		for c := range codes {
			counts[c]++
		}
		if counts[rpc.ResourceExhausted] != calls-concurrency-queue || counts[rpc.OK] != concurrency+queue {
			t.Errorf("codes = %v, want %d ResourceExhausted and %d OK", counts, calls-concurrency-queue, concurrency+queue)
		}
		if n := srv.Stats().Dropped[rpc.DropOverload]; n != calls-concurrency-queue {
			t.Errorf("overload count = %d, want %d", n, calls-concurrency-queue)
		}
		if n := srv.Stats().Dropped[rpc.DropUnanswered]; n != 0 {
			t.Errorf("%d requests went unanswered", n)
		}
	})
}
