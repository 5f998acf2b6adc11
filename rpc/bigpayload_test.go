package rpc_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// Sizes from issue 12, defect 9: e·10⁵ bytes out, π·10⁵ bytes back. The
// StringValue's encoding adds a tag byte and a 3-byte length.
const (
	bigRequestSize  = 271_828
	bigResponseSize = 314_159
	stringValueHead = 4
)

// bigPayloads serialises the two brokers' runs of
// TestLargePayloadsConcurrent: each moves over half a gigabyte, and on a
// small machine the two at once would only measure each other.
var bigPayloads sync.Mutex

// TestLargePayloadsConcurrent makes 1,000 concurrent calls (100 with
// -short, 50 with -race) with a 271,828-byte request and a 314,159-byte
// answer through one client and one server. Every call must succeed, and
// none may return later than its deadline plus a small margin, measured
// per call.
//
// On testbroker, mochi used to wedge: its reader of a connection writes the
// PUBACK, and gives messages for another client their packet IDs, under the
// lock that client's writer holds while blocked writing to it, so it
// stopped reading the caller and the server, whose own writes then blocked;
// paho's reader in turn waited on the session lock held by a PUBACK write
// queued behind them, and stopped reading the broker. Calls failed with
// "deadline exceeded while publishing" and returned only when the keepalive
// cut the connection, 30 s after their deadline (testbroker/queuedconn.go).
func TestLargePayloadsConcurrent(t *testing.T) {
	calls := 1000
	switch {
	case raceEnabled():
		calls = 50 // the race detector makes copying 600 MB take minutes
	case testing.Short():
		calls = 100
	}
	const (
		deadline = 15 * time.Second
		margin   = 2 * time.Second
	)
	eachBroker(t, func(t *testing.T, b *broker) {
		bigPayloads.Lock()
		defer bigPayloads.Unlock()

		answer := strings.Repeat("π", (bigResponseSize-stringValueHead)/2) + "3"
		request := strings.Repeat("e", bigRequestSize-stringValueHead)
		svc := &echoService{handle: func(_ context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			if len(in.GetValue()) != len(request) {
				return nil, rpc.Errorf(rpc.InvalidArgument, "request of %d bytes, want %d", len(in.GetValue()), len(request))
			}
			return wrapperspb.String(answer), nil
		}}
		startServer(t, b.url, svc, rpc.WithServerID("big-1"), rpc.WithQueueSize(calls))
		client := newClient(t, b.url)

		type result struct {
			took time.Duration
			err  error
		}
		results := make([]result, calls)
		var wg sync.WaitGroup
		begin := time.Now()
		for i := range calls {
			wg.Go(func() {
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				defer cancel()
				got, err := echo(ctx, client, request, rpc.To("big-1"))
				if err == nil && got != answer {
					err = fmt.Errorf("answer of %d bytes, want %d", len(got), len(answer))
				}
				results[i] = result{took: time.Since(start), err: err}
			})
		}

		// A wedge shows in the goroutines: dump them once calls are late.
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(deadline + margin):
			t.Errorf("%s: calls still running %v after they started; goroutines:\n%s", b.name, deadline+margin, goroutineSummary())
			<-done
		}
		elapsed := time.Since(begin)

		codes := map[string]int{}
		var worst time.Duration
		var late []string
		for i, r := range results {
			worst = max(worst, r.took)
			if r.err != nil {
				key := rpc.CodeOf(r.err).String()
				if codes[key] == 0 {
					t.Logf("%s: call %d: first %s: %v", b.name, i, key, r.err)
				}
				codes[key]++
			} else {
				codes["OK"]++
			}
			if r.took > deadline+margin {
				late = append(late, fmt.Sprintf("call %d after %v (%v)", i, r.took.Round(time.Millisecond), r.err))
			}
		}
		t.Logf("%s: %d calls in %v: %v; slowest %v (deadline %v)", b.name, calls, elapsed.Round(time.Millisecond), codes, worst.Round(time.Millisecond), deadline)
		if len(late) > 0 {
			t.Errorf("%s: %d calls returned more than %v after their deadline, e.g. %s", b.name, len(late), margin, late[0])
		}
		if codes["OK"] != calls {
			t.Errorf("%s: %d of %d calls succeeded: %v", b.name, codes["OK"], calls, codes)
		}
	})
}

// TestCallEndsByDeadlineWhenBrokerStopsReading: whatever the broker does, a
// call returns by its deadline. Here the broker stops reading the caller's
// connection (a proxy stands for it) while calls with large requests are
// under way: the caller's TCP buffers fill, paho's writes of the requests
// block, and so does its session lock, which a PUBACK write holds. paho
// heeds the call's context only once the request is written; the calls
// must end with DeadlineExceeded at their deadlines all the same, and the
// connection carry calls again once the broker reads again.
func TestCallEndsByDeadlineWhenBrokerStopsReading(t *testing.T) {
	const (
		calls    = 64 // 17 MB of requests, more than loopback TCP buffers hold
		deadline = time.Second
		// Generous: with the race detector on a loaded 2-core machine the
		// last of 64 calls returned up to 1.8 s after its deadline; a call
		// that waited for the broker to read again would return only when
		// the test resumes it, 10 s on.
		margin = 4 * time.Second
	)
	eachBroker(t, func(t *testing.T, b *broker) {
		startServer(t, b.url, &echoService{}, rpc.WithServerID("stall-1"))
		proxy := newStallProxy(t, strings.TrimPrefix(b.url, "mqtt://"))
		client := newClient(t, proxy.url())
		if _, err := echo(testCtx(t), client, "warm-up", rpc.To("stall-1")); err != nil {
			t.Fatal(err)
		}

		proxy.stall()
		request := strings.Repeat("e", bigRequestSize-stringValueHead)
		took := make([]time.Duration, calls)
		errs := make([]error, calls)
		var wg sync.WaitGroup
		for i := range calls {
			wg.Go(func() {
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				defer cancel()
				_, errs[i] = echo(ctx, client, request, rpc.To("stall-1"))
				took[i] = time.Since(start)
			})
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(deadline + margin + 10*time.Second):
			t.Errorf("%s: calls still running 10 s after their deadline; goroutines:\n%s", b.name, goroutineSummary())
			proxy.resume()
			<-done
		}
		var worst time.Duration
		for i := range calls {
			worst = max(worst, took[i])
			if took[i] > deadline+margin {
				t.Errorf("%s: call %d returned %v after its deadline: %v", b.name, i, (took[i] - deadline).Round(time.Millisecond), errs[i])
			} else if rpc.CodeOf(errs[i]) != rpc.DeadlineExceeded {
				t.Errorf("%s: call %d: %v, want DeadlineExceeded", b.name, i, errs[i])
			}
		}
		t.Logf("%s: %d calls to a broker that does not read; slowest returned after %v (deadline %v)", b.name, calls, worst.Round(time.Millisecond), deadline)

		proxy.resume()
		if got, err := echo(testCtx(t), client, "after", rpc.To("stall-1")); err != nil || got != "after" {
			t.Errorf("%s: call once the broker reads again: %q, %v", b.name, got, err)
		}
	})
}

// stallProxy forwards TCP connections to a broker. stall stops it reading
// what the clients send, as a broker that stopped reading them would, until
// resume; what the broker sends is forwarded all along.
type stallProxy struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	resumed chan struct{} // nil while forwarding; closed by resume
	conns   []net.Conn
	wg      sync.WaitGroup
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		p.resume()
		_ = ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *stallProxy) url() string { return "mqtt://" + p.ln.Addr().String() }

func (p *stallProxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.resumed == nil {
		p.resumed = make(chan struct{})
	}
}

func (p *stallProxy) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.resumed != nil {
		close(p.resumed)
		p.resumed = nil
	}
}

// waitForward returns once the proxy forwards what clients send.
func (p *stallProxy) waitForward() {
	p.mu.Lock()
	resumed := p.resumed
	p.mu.Unlock()
	if resumed != nil {
		<-resumed
	}
}

func (p *stallProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, b)
		p.mu.Unlock()
		// Either direction ending closes both connections.
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			defer func() { _, _ = c.Close(), b.Close() }()
			buf := make([]byte, 32<<10)
			for {
				p.waitForward()
				n, err := c.Read(buf)
				if n > 0 {
					if _, err := b.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		go func() {
			defer p.wg.Done()
			_, _ = io.Copy(c, b)
			_, _ = c.Close(), b.Close()
		}()
	}
}

// raceEnabled reports whether the test binary was built with -race.
func raceEnabled() bool {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" {
				return s.Value == "true"
			}
		}
	}
	return false
}

// goroutineSummary returns every goroutine's stack, identical stacks
// (ignoring arguments and goroutine headers) counted once.
func goroutineSummary() string {
	buf := make([]byte, 64<<20)
	buf = buf[:runtime.Stack(buf, true)]
	counts := map[string]int{}
	var order []string
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		lines := strings.Split(string(g), "\n")
		if len(lines) < 2 {
			continue
		}
		state := lines[0]
		if i := strings.Index(state, "["); i >= 0 {
			state = state[i:]
			if j := strings.IndexAny(state, ",]"); j >= 0 {
				state = state[:j] + "]"
			}
		}
		var frames []string
		for _, l := range lines[1:] {
			if strings.HasPrefix(l, "\t") {
				l = strings.TrimSpace(l)
				if k := strings.LastIndex(l, " +0x"); k >= 0 {
					l = l[:k]
				}
				frames = append(frames, "\t"+l)
			} else if k := strings.LastIndex(l, "("); k >= 0 {
				frames = append(frames, l[:k])
			}
		}
		key := state + "\n" + strings.Join(frames, "\n")
		if counts[key] == 0 {
			order = append(order, key)
		}
		counts[key]++
	}
	slices.SortStableFunc(order, func(a, b string) int { return counts[b] - counts[a] })
	var out strings.Builder
	for _, key := range order {
		fmt.Fprintf(&out, "%d × %s\n\n", counts[key], key)
	}
	return out.String()
}
