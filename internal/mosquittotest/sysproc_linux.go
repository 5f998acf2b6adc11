package mosquittotest

import "syscall"

// sysProcAttr has the kernel kill mosquitto if the test binary dies without
// running its cleanups (a test timeout, a crash). The signal follows the OS
// thread that started mosquitto; Go only ends threads that a goroutine locked
// and never unlocked, which tests here do not do.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
