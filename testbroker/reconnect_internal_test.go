package testbroker

import (
	"net"
	"testing"
	"time"
)

func pipeConn(t *testing.T) net.Conn {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	return a
}

func TestSessionGate(t *testing.T) {
	g := newSessionGate()
	first, second, other := pipeConn(t), pipeConn(t), pipeConn(t)
	if !g.enter("id", first, time.Second) {
		t.Fatal("first connection did not enter a free gate")
	}
	if !g.enter("id", first, time.Second) {
		t.Fatal("the holder could not enter again")
	}
	if !g.enter("other-id", other, 0) {
		t.Fatal("a connection with another ID waited")
	}
	if g.enter("id", second, 20*time.Millisecond) {
		t.Fatal("second connection entered a held gate")
	}

	entered := make(chan bool)
	go func() { entered <- g.enter("id", second, 10*time.Second) }()
	select {
	case <-entered:
		t.Fatal("second connection entered before the first left")
	case <-time.After(20 * time.Millisecond):
	}
	g.leave(first)
	if !<-entered {
		t.Fatal("second connection did not enter once the first left")
	}
	g.leave(first) // leaving twice does nothing
	g.leave(nil)

	// A connection that enters another ID's gate leaves the one it held.
	if !g.enter("third-id", second, time.Second) {
		t.Fatal("second connection did not enter a free gate")
	}
	if !g.enter("id", first, 0) {
		t.Fatal("the gate second left is still held")
	}
	g.leave(first)
	g.leave(second)
	g.leave(other)
	if len(g.byID) != 0 || len(g.byConn) != 0 {
		t.Errorf("gate still holds %v / %v", g.byID, g.byConn)
	}
}
