//go:build !linux

package transport

// QuickAckSupported is whether Config.QuickAck can take effect:
// TCP_QUICKACK exists on Linux only.
const QuickAckSupported = false

func setQuickAck(uintptr) {}
