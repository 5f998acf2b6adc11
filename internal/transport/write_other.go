//go:build !unix

package transport

import (
	"errors"
	"syscall"
)

// directWriteSupported is whether a writer can write its packet itself
// without blocking: not here, so every packet goes to the flusher.
const directWriteSupported = false

// nonBlockingWriter is not made on this platform.
type nonBlockingWriter struct{}

func newNonBlockingWriter(syscall.RawConn) *nonBlockingWriter { return nil }

func (*nonBlockingWriter) writeNow([]byte) (int, error) {
	return 0, errors.New("transport: no non-blocking writes on this platform")
}
