package rpctest

import (
	"net"
	"strings"
	"sync"
	"testing"
)

// Proxy forwards TCP connections to a broker, so that a test can cut them
// as a network failure would: the broker sees the socket close without a
// DISCONNECT (and publishes the client's Will), the client sees its
// connection drop and reconnects through the proxy.
type Proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  []net.Conn
	frozen bool
	refuse bool
	closed int // new connections closed unforwarded (Refuse, Freeze)
	wg     sync.WaitGroup
}

// NewProxy listens on a free loopback port and forwards to the broker at
// brokerURL (mqtt://host:port); it stops at cleanup.
func NewProxy(t *testing.T, brokerURL string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: strings.TrimPrefix(brokerURL, "mqtt://")}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.CutAll()
		p.wg.Wait()
	})
	return p
}

// URL is the proxy's broker URL.
func (p *Proxy) URL() string { return "mqtt://" + p.Addr() }

// Addr is the address the proxy listens on, "127.0.0.1:PORT".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// CutAll closes every forwarded connection at both ends, with a reset
// (SO_LINGER 0), and returns how many pairs it cut. It speaks no MQTT: the
// broker gets no DISCONNECT, as from a killed process, and publishes the
// clients' Wills at once. New connections are still accepted, unless
// the proxy refuses them (Refuse).
func (p *Proxy) CutAll() int {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // a reset, as a crash looks from afar
		}
		_ = c.Close()
	}
	return len(conns) / 2
}

// Freeze makes the network go silent without closing anything: bytes in
// both directions are dropped and new connections are closed at once, as
// when a device loses its link. The broker notices only at its keepalive
// timeout.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	p.frozen = true
	p.mu.Unlock()
}

// Refuse(true) makes the proxy close every new connection as soon as it
// is accepted, without forwarding it; the forwarded ones go on.
// Refuse(false) forwards new connections again. Refuse(true) then CutAll
// is a kill -9 of the processes behind the proxy: their connections end at
// once and they do not come back.
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	p.refuse = on
	p.mu.Unlock()
}

// Refused returns how many new connections the proxy closed without
// forwarding them (while refusing, or frozen): the clients' attempts to
// reconnect.
func (p *Proxy) Refused() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// closedToNew reports whether new connections are closed at once, and
// counts one if so.
func (p *Proxy) closedToNew() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen || p.refuse {
		p.closed++
		return true
	}
	return false
}

func (p *Proxy) isFrozen() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.frozen
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.closedToNew() {
			_ = client.Close()
			continue
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.mu.Lock()
		if p.frozen || p.refuse {
			// Refused or frozen while dialling: after Refuse(true) returns,
			// nothing new is forwarded.
			p.closed++
			p.mu.Unlock()
			_ = client.Close()
			_ = server.Close()
			continue
		}
		p.conns = append(p.conns, client, server)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(client, server)
		go p.pipe(server, client)
	}
}

func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.isFrozen() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	_ = dst.Close()
	_ = src.Close()
}
