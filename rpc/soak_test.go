package rpc_test

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// TestSoak runs 4 callers at 250 calls/s each while the server's connection
// is cut every 5 s, for the duration in MQTTRPC_SOAK (e.g. "60s"); it does
// not run by default. Every call must end OK, Unavailable or
// DeadlineExceeded, none may outlive its deadline, and the handler must have
// run exactly as often as calls succeeded.
//
//	MQTTRPC_SOAK=60s go test -run TestSoak -v ./rpc
func TestSoak(t *testing.T) {
	duration, err := time.ParseDuration(os.Getenv("MQTTRPC_SOAK"))
	if err != nil || duration <= 0 {
		t.Skip("set MQTTRPC_SOAK to a duration such as 60s to run the soak test")
	}
	const (
		callers      = 4
		ratePerCall  = 250
		callDeadline = 2 * time.Second
		cutEvery     = 5 * time.Second
	)
	b := newTestbroker(t)
	svc := &echoService{}
	conn := dial(t, b.url, rpc.WithClientID(faultServerID))
	srv := rpc.NewServer(conn, rpc.WithServerID("dev-1"), rpc.WithQueueSize(2000))
	srv.RegisterService(&echoDesc, svc)
	if err := srv.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })

	var ok, unavailable, deadline, other, late atomic.Int64
	var worst atomic.Int64
	stop := time.Now().Add(duration)
	var wg sync.WaitGroup
	for i := range callers {
		client := newClient(t, b.url, rpc.WithRetry(rpc.RetryPolicy{MaxAttempts: 5, InitialBackoff: 50 * time.Millisecond}))
		wg.Go(func() {
			ticker := time.NewTicker(time.Second / ratePerCall)
			defer ticker.Stop()
			var calls sync.WaitGroup
			for n := 0; time.Now().Before(stop); n++ {
				<-ticker.C
				calls.Go(func() {
					start := time.Now()
					ctx, cancel := context.WithTimeout(context.Background(), callDeadline)
					defer cancel()
					_, err := echo(ctx, client, "soak", rpc.To("dev-1"))
					took := time.Since(start)
					for {
						w := worst.Load()
						if int64(took) <= w || worst.CompareAndSwap(w, int64(took)) {
							break
						}
					}
					if took > callDeadline+100*time.Millisecond {
						late.Add(1)
					}
					switch rpc.CodeOf(err) {
					case rpc.OK:
						ok.Add(1)
					case rpc.Unavailable:
						unavailable.Add(1)
					case rpc.DeadlineExceeded:
						deadline.Add(1)
					default:
						other.Add(1)
						t.Errorf("caller %d call %d: %v", i, n, err)
					}
				})
			}
			calls.Wait()
		})
	}
	cuts := 0
	for cut := time.NewTicker(cutEvery); time.Now().Before(stop); {
		<-cut.C
		if err := b.tb.Disconnect(faultServerID); err == nil {
			cuts++
		}
	}
	wg.Wait()
	// Answers still on their way when the last call gave up are done now.
	time.Sleep(callDeadline)
	total := ok.Load() + unavailable.Load() + deadline.Load() + other.Load()
	t.Logf("%v: %d calls, %d OK, %d Unavailable, %d DeadlineExceeded, %d other; %d connection cuts; handler ran %d times; slowest call %v",
		duration, total, ok.Load(), unavailable.Load(), deadline.Load(), other.Load(), cuts, svc.calls.Load(), time.Duration(worst.Load()))
	if late.Load() > 0 {
		t.Errorf("%d calls outlived their deadline", late.Load())
	}
	if svc.calls.Load() != ok.Load() {
		t.Errorf("handler ran %d times for %d successful calls", svc.calls.Load(), ok.Load())
	}
}
