package transport

import "syscall"

// QuickAckSupported is whether Config.QuickAck can take effect: Linux has
// TCP_QUICKACK.
const QuickAckSupported = true

// setQuickAck turns TCP_QUICKACK on for the socket fd; it also sends the
// ACK the kernel was delaying, if any.
func setQuickAck(fd uintptr) {
	_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
}
