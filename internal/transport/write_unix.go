//go:build unix

package transport

import (
	"errors"
	"syscall"
)

// directWriteSupported is whether a writer can write its packet itself
// without blocking (nonBlockingWriter).
const directWriteSupported = true

// nonBlockingWriter writes as much of a buffer as the socket takes now,
// and never waits for it to take more: Go's sockets are non-blocking
// underneath, and the callback returning true tells the runtime not to wait
// for the socket to become writable. One per connection, used by one
// writer at a time (the one that marked its write under way), so that a
// write allocates nothing: the callback is made once.
type nonBlockingWriter struct {
	raw      syscall.RawConn
	callback func(fd uintptr) bool // w.write, bound once
	b        []byte
	n        int
	err      error
}

func newNonBlockingWriter(raw syscall.RawConn) *nonBlockingWriter {
	w := &nonBlockingWriter{raw: raw}
	w.callback = w.write
	return w
}

// writeNow writes what the socket takes of b now and returns how many
// bytes went out.
func (w *nonBlockingWriter) writeNow(b []byte) (int, error) {
	w.b, w.n, w.err = b, 0, nil
	err := w.raw.Write(w.callback)
	n, werr := w.n, w.err
	w.b, w.err = nil, nil
	if werr == nil {
		werr = err
	}
	return n, werr
}

func (w *nonBlockingWriter) write(fd uintptr) bool {
	for w.n < len(w.b) {
		m, err := syscall.Write(int(fd), w.b[w.n:])
		if m > 0 {
			w.n += m
		}
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			if !errors.Is(err, syscall.EAGAIN) {
				w.err = err
			}
			break
		}
	}
	return true
}
