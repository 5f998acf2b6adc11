package testbroker

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

// queuedPipe returns a queuedConn over one end of a pipe, and the other end.
func queuedPipe(t *testing.T) (*queuedConn, net.Conn) {
	t.Helper()
	a, b := net.Pipe()
	c := newQueuedConn(a)
	t.Cleanup(func() { c.abort(); _ = b.Close() })
	return c, b
}

// Writes return at once, whether or not the peer reads, and arrive whole
// and in order: small ones share chunks, large ones get buffers of their
// own.
func TestQueuedConnKeepsOrder(t *testing.T) {
	c, peer := queuedPipe(t)
	var want bytes.Buffer
	for i := range 300 {
		p := bytes.Repeat([]byte{byte(i)}, 1+(i*7919)%(3*chunkSize))
		want.Write(p)
		if n, err := c.Write(p); n != len(p) || err != nil {
			t.Fatalf("write %d: %d, %v", i, n, err)
		}
	}
	got := make([]byte, want.Len())
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatal("the peer read other bytes than were written")
	}
}

// Close writes what was queued before it, then closes; later writes fail.
func TestQueuedConnCloseFlushes(t *testing.T) {
	c, peer := queuedPipe(t)
	if _, err := c.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	read := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		read <- b
	}()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got := string(<-read); got != "last words" {
		t.Errorf("peer read %q, want the queued packet before the end", got)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after Close: %v, want net.ErrClosed", err)
	}
}

// abort cuts the connection at once, although the peer reads nothing and
// bytes are queued; later writes fail.
func TestQueuedConnAbort(t *testing.T) {
	c, _ := queuedPipe(t)
	if _, err := c.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	c.abort() // returns once the writer, blocked in the pipe, has given up
	if _, err := c.Write([]byte("x")); err == nil {
		t.Error("write after abort succeeded")
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close after abort: %v", err)
	}
}
