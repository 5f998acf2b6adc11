package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// mosquitto is a Mosquitto process on a free 127.0.0.1 port.
type mosquitto struct {
	cmd    *exec.Cmd
	dir    string
	addr   string
	exited chan struct{}
	log    *lockedBuffer
}

// findMosquitto returns the mosquitto binary, or "" when it is not installed.
func findMosquitto() string {
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// mosquittoVersion returns what `mosquitto -h` says of itself.
func mosquittoVersion(bin string) string {
	out, _ := exec.Command(bin, "-h").CombinedOutput()
	first, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(first)
}

// startMosquitto runs bin with set_tcp_nodelay as given and flow-control
// limits out of the way (as internal/mosquittotest does).
func startMosquitto(bin string, noDelay bool) (*mosquitto, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	dir, err := os.MkdirTemp("", "bench-mosquitto-")
	if err != nil {
		return nil, err
	}
	var conf strings.Builder
	if os.Geteuid() == 0 {
		conf.WriteString("user root\n")
	}
	fmt.Fprintf(&conf, "persistence false\nlog_dest stderr\nlog_type error\nsys_interval 0\nmax_inflight_messages 0\nmax_queued_messages 100000\n")
	if noDelay {
		conf.WriteString("set_tcp_nodelay true\n")
	}
	fmt.Fprintf(&conf, "listener %d 127.0.0.1\nallow_anonymous true\n", port)
	confPath := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(confPath, []byte(conf.String()), 0o600); err != nil {
		return nil, err
	}
	m := &mosquitto{dir: dir, addr: fmt.Sprintf("127.0.0.1:%d", port), exited: make(chan struct{}), log: new(lockedBuffer)}
	m.cmd = exec.Command(bin, "-c", confPath)
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		_ = m.cmd.Wait()
		close(m.exited)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-m.exited:
			return nil, fmt.Errorf("mosquitto exited: %s", m.log)
		default:
		}
		if c, err := net.DialTimeout("tcp", m.addr, 100*time.Millisecond); err == nil {
			_ = c.Close()
			return m, nil
		}
		if time.Now().After(deadline) {
			m.stop()
			return nil, fmt.Errorf("mosquitto did not listen on %s: %s", m.addr, m.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (m *mosquitto) url() string { return "mqtt://" + m.addr }

func (m *mosquitto) stop() {
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
	case <-time.After(5 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.exited
	}
	_ = os.RemoveAll(m.dir)
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
