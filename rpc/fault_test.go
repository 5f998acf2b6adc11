package rpc_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// faultEnv is one server (client ID faultServerID) and one caller (client ID
// faultCallerID) on their own testbroker.
type faultEnv struct {
	b       *broker
	svc     *echoService
	client  *rpc.Client
	release chan struct{} // closed to let blocked handlers finish
	started chan struct{} // receives when a handler starts
}

const (
	faultServerID = "fault-server"
	faultCallerID = "fault-caller"
	requestTopics = "mqttrpc/+/dev-1/+"
	responseTopic = "mqttrpc/responses/" + faultCallerID
)

// newFaultEnv starts the pair; if block is true, Echo handlers wait for
// release (Ping never blocks).
func newFaultEnv(t *testing.T, block bool) *faultEnv {
	t.Helper()
	e := &faultEnv{b: newTestbroker(t), svc: &echoService{}, release: make(chan struct{}), started: make(chan struct{}, 10)}
	e.svc.handle = func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		e.started <- struct{}{}
		if block {
			select {
			case <-e.release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return in, nil
	}
	conn := dial(t, e.b.url, rpc.WithClientID(faultServerID))
	srv := rpc.NewServer(conn, rpc.WithServerID("dev-1"))
	srv.RegisterService(&echoDesc, e.svc)
	if err := srv.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	e.client = rpc.NewClient(dial(t, e.b.url, rpc.WithClientID(faultCallerID)))
	t.Cleanup(func() { _ = e.client.Close(context.Background()) })
	return e
}

// call makes one Echo call with the given deadline in the background.
func (e *faultEnv) call(deadline time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		got, err := echo(ctx, e.client, "payload", rpc.To("dev-1"))
		if err == nil && got != "payload" {
			err = rpc.Errorf(rpc.DataLoss, "wrong answer %q", got)
		}
		done <- err
	}()
	return done
}

// waitBothReady waits until the caller and the server have reconnected and
// resubscribed: a Ping round trip succeeds.
func (e *faultEnv) waitBothReady(t *testing.T) {
	t.Helper()
	waitFor(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		return e.client.Call(ctx, echoServiceName, "Ping", wrapperspb.String(""), new(wrapperspb.StringValue), rpc.To("dev-1")) == nil
	})
}

func (e *faultEnv) finish(t *testing.T, result <-chan error, want rpc.Code, wantRuns int64) {
	t.Helper()
	select {
	case err := <-result:
		if got := rpc.CodeOf(err); got != want {
			t.Errorf("caller saw %v (%v), want %v", got, err, want)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("call outlived its deadline")
	}
	if n := e.svc.calls.Load(); n != wantRuns {
		t.Errorf("handler ran %d times, want %d", n, wantRuns)
	}
}

// TestFaultTable is the fault table of docs/protocol.md: for each fault,
// what the caller sees and how many times the handler runs.
func TestFaultTable(t *testing.T) {
	const short = time.Second

	t.Run("drop request", func(t *testing.T) {
		t.Parallel()
		e := newFaultEnv(t, false)
		e.b.tb.DropPublishes(requestTopics, 1)
		e.finish(t, e.call(short), rpc.DeadlineExceeded, 0)
	})
	t.Run("drop response", func(t *testing.T) {
		t.Parallel()
		e := newFaultEnv(t, false)
		e.b.tb.DropPublishes(responseTopic, 1)
		e.finish(t, e.call(short), rpc.DeadlineExceeded, 1)
	})
	t.Run("duplicate request", func(t *testing.T) {
		t.Parallel()
		e := newFaultEnv(t, false)
		e.b.tb.DuplicatePublishes(requestTopics, 1)
		e.finish(t, e.call(10*time.Second), rpc.OK, 1)
	})
	t.Run("duplicate response", func(t *testing.T) {
		t.Parallel()
		e := newFaultEnv(t, false)
		e.b.tb.DuplicatePublishes(responseTopic, 1)
		e.finish(t, e.call(10*time.Second), rpc.OK, 1)
	})
	t.Run("delay request past the deadline", func(t *testing.T) {
		t.Parallel()
		e := newFaultEnv(t, false)
		e.b.tb.DelayPublishes(requestTopics, 1, 2*short)
		e.finish(t, e.call(short), rpc.DeadlineExceeded, 0)
		time.Sleep(1500 * time.Millisecond) // past the delay: the expired request never runs
		if n := e.svc.calls.Load(); n != 0 {
			t.Errorf("expired request ran %d times", n)
		}
	})
	t.Run("delay response within the deadline", func(t *testing.T) {
		t.Parallel()
		e := newFaultEnv(t, false)
		e.b.tb.DelayPublishes(responseTopic, 1, 200*time.Millisecond)
		e.finish(t, e.call(10*time.Second), rpc.OK, 1)
	})
	t.Run("cut the server's connection mid-call", func(t *testing.T) {
		t.Parallel()
		e := newFaultEnv(t, true)
		result := e.call(10 * time.Second)
		<-e.started
		if err := e.b.tb.Disconnect(faultServerID); err != nil {
			t.Fatal(err)
		}
		close(e.release) // the answer is published once the server is back
		e.finish(t, result, rpc.OK, 1)
	})
	t.Run("cut the caller's connection mid-call", func(t *testing.T) {
		t.Parallel()
		e := newFaultEnv(t, true)
		result := e.call(10 * time.Second)
		<-e.started
		if err := e.b.tb.Disconnect(faultCallerID); err != nil {
			t.Fatal(err)
		}
		e.waitBothReady(t) // the caller resubscribed to its response topic
		close(e.release)
		e.finish(t, result, rpc.OK, 1)
	})
	t.Run("restart the broker mid-call", func(t *testing.T) {
		t.Parallel()
		e := newFaultEnv(t, true)
		result := e.call(15 * time.Second)
		<-e.started
		if err := e.b.tb.Restart(); err != nil {
			t.Fatal(err)
		}
		e.waitBothReady(t)
		close(e.release)
		e.finish(t, result, rpc.OK, 1)
	})
	t.Run("call while the broker is down", func(t *testing.T) {
		t.Parallel()
		e := newFaultEnv(t, false)
		e.b.tb.Close()
		start := time.Now()
		e.finish(t, e.call(10*time.Second), rpc.Unavailable, 0)
		if d := time.Since(start); d > time.Second {
			t.Errorf("Unavailable after %v; a call must fail fast while disconnected", d)
		}
	})
}
