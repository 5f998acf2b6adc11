//go:build unix

package transport

import (
	"errors"
	"syscall"
)

// directWriteSupported is whether a writer can write its packet itself
// without blocking (nonBlockingWrite).
const directWriteSupported = true

// nonBlockingWrite writes as much of b as the socket takes now, and never
// waits for it to take more: Go's sockets are non-blocking underneath, and
// the callback returning true tells the runtime not to wait for the socket
// to become writable. It returns how many bytes went out.
func nonBlockingWrite(raw syscall.RawConn, b []byte) (int, error) {
	var n int
	var werr error
	err := raw.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, err := syscall.Write(int(fd), b[n:])
			if m > 0 {
				n += m
			}
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			if err != nil {
				if !errors.Is(err, syscall.EAGAIN) {
					werr = err
				}
				break
			}
		}
		return true
	})
	if werr == nil {
		werr = err
	}
	return n, werr
}
