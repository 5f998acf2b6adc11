//go:build !linux

package rpc

// quickAckSupported: TCP_QUICKACK exists on Linux only.
const quickAckSupported = false

func setQuickAck(uintptr) {}
