package rpc_test

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// cutProxy forwards TCP connections to a broker. hold stops forwarding
// what the broker sends (its PUBACKs and answers never arrive), and cut
// closes every connection; later connections are forwarded again.
type cutProxy struct {
	ln      net.Listener
	target  string
	holding atomic.Bool
	mu      sync.Mutex
	conns   []net.Conn
	wg      sync.WaitGroup
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) url() string { return "mqtt://" + p.ln.Addr().String() }

func (p *cutProxy) accept() {
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
		p.holding.Store(false)
		p.mu.Lock()
		p.conns = append(p.conns, c, b)
		p.mu.Unlock()
		// Either direction ending closes both connections.
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			_, _ = io.Copy(b, c)
			_, _ = c.Close(), b.Close()
		}()
		go func() {
			defer p.wg.Done()
			defer func() { _, _ = c.Close(), b.Close() }()
			buf := make([]byte, 32<<10)
			for {
				n, err := b.Read(buf)
				if n > 0 && !p.holding.Load() {
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// A call whose request is on its way when the connection drops fails with
// Unavailable, not at its deadline: paho forgets the publish waiting for
// its PUBACK when a session without expiry ends, and the Conn must notice.
func TestConnectionLostAwaitingPuback(t *testing.T) {
	b := newTestbroker(t)
	svc := &echoService{}
	startServer(t, b.url, svc, rpc.WithServerID("dev-1"))
	proxy := newCutProxy(t, b.tb.Addr())
	client := newClient(t, proxy.url()) // no retries by default

	if _, err := echo(testCtx(t), client, "warm-up", rpc.To("dev-1")); err != nil {
		t.Fatal(err)
	}
	proxy.holding.Store(true)
	done := make(chan error, 1)
	go func() {
		// A deadline shorter than paho's own 10 s wait for a PUBACK: a
		// publish that nobody ended would end as DeadlineExceeded.
		_, err := echo(shortCtx(t, 5*time.Second), client, "lost", rpc.To("dev-1"))
		done <- err
	}()
	// The request reaches the server; its PUBACK and the answer do not
	// come back.
	waitFor(t, func() bool { return svc.calls.Load() == 2 })
	proxy.cut()
	wantCode(t, <-done, rpc.Unavailable)
}
