// Package mosquittotest runs a real Mosquitto 2 broker on a free loopback
// port for the duration of a test.
//
//	broker := mosquittotest.Start(t) // skips the test without mosquitto
//	... connect clients to broker.URL() ...
//
// Mosquitto answers a QoS 1 publish nobody subscribes to with PUBACK 0x10
// "no matching subscribers" (MQTT 5 clients), which the embedded testbroker
// never does.
package mosquittotest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RequireEnv is the environment variable that, set to 1, turns a missing
// mosquitto binary from a skipped test into a failed one.
const RequireEnv = "MQTTRPC_REQUIRE_MOSQUITTO"

const (
	startTimeout = 10 * time.Second // until mosquitto accepts connections
	stopTimeout  = 5 * time.Second  // after SIGTERM, before SIGKILL
	portAttempts = 5                // free ports tried when another process takes one first
)

// errAddrInUse means mosquitto could not bind its port.
var errAddrInUse = errors.New("address already in use")

// Broker is a Mosquitto process started by Start. Call Restart from the
// test's goroutine: it fails the test with tb.Fatal.
type Broker struct {
	tb   testing.TB
	bin  string
	dir  string
	cfg  config
	port int
	log  *syncBuffer // everything mosquitto wrote, across restarts

	mu   sync.Mutex
	proc *process // nil when stopped
}

// process is one run of mosquitto.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process is gone
	err    error         // from Wait, valid after exited is closed
}

// Start starts mosquitto on 127.0.0.1:<free port> with a configuration
// generated in tb.TempDir(), waits until it accepts TCP connections, and stops
// it (SIGTERM, then wait) when the test ends. Mosquitto's log is printed with
// tb.Log only if the test failed.
//
// Without a mosquitto binary (on PATH or in /usr/sbin or /usr/local/sbin),
// Start skips the test, or fails it if MQTTRPC_REQUIRE_MOSQUITTO=1.
func Start(tb testing.TB, opts ...Option) *Broker {
	tb.Helper()
	cfg := defaultConfig()
	for _, opt := range opts {
		opt.apply(&cfg)
	}
	b := &Broker{tb: tb, bin: findBinary(tb), dir: tb.TempDir(), cfg: cfg, log: new(syncBuffer)}
	tb.Cleanup(func() {
		b.Stop()
		if tb.Failed() {
			tb.Logf("mosquitto log (%s):\n%s", b.Addr(), b.log)
		}
	})
	for attempt := 1; ; attempt++ {
		b.port = freePort(tb)
		err := b.start()
		if err == nil {
			return b
		}
		if !errors.Is(err, errAddrInUse) || attempt == portAttempts {
			tb.Fatalf("mosquittotest: start mosquitto: %v\n%s", err, b.log)
		}
	}
}

// URL returns the broker's URL, "mqtt://127.0.0.1:PORT".
func (b *Broker) URL() string { return "mqtt://" + b.Addr() }

// Addr returns the address the broker listens on, "127.0.0.1:PORT".
func (b *Broker) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port)) }

// Restart stops mosquitto (SIGTERM) and starts it again on the same port.
// Sessions, subscriptions and retained messages are lost, unless the broker
// was started WithPersistence. It fails the test if mosquitto does not come
// back.
func (b *Broker) Restart() {
	b.tb.Helper()
	b.Stop()
	fmt.Fprintln(b.log, "--- mosquittotest: restart ---")
	deadline := time.Now().Add(startTimeout)
	for {
		err := b.start()
		if err == nil {
			return
		}
		if !errors.Is(err, errAddrInUse) || time.Now().After(deadline) {
			b.tb.Fatalf("mosquittotest: restart mosquitto: %v\n%s", err, b.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops mosquitto now: SIGTERM, and SIGKILL if it has not exited after
// five seconds. Calling it again does nothing.
func (b *Broker) Stop() {
	b.mu.Lock()
	proc := b.proc
	b.proc = nil
	b.mu.Unlock()
	if proc != nil {
		proc.stop()
	}
}

// start runs mosquitto on b.port and waits until it accepts connections.
func (b *Broker) start() error {
	confPath := filepath.Join(b.dir, "mosquitto.conf")
	if err := os.WriteFile(confPath, []byte(configFile(b.cfg, b.port, b.dir)), 0o600); err != nil {
		return err
	}
	logStart := b.log.Len()
	cmd := exec.Command(b.bin, "-c", confPath)
	cmd.Stdout, cmd.Stderr = b.log, b.log
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return err
	}
	proc := &process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		proc.err = cmd.Wait()
		close(proc.exited)
	}()

	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-proc.exited:
			if bytes.Contains(b.log.Since(logStart), []byte("Address already in use")) {
				return fmt.Errorf("port %d: %w", b.port, errAddrInUse)
			}
			return fmt.Errorf("mosquitto exited: %v", proc.err)
		default:
		}
		conn, err := net.DialTimeout("tcp", b.Addr(), 100*time.Millisecond)
		if err == nil {
			_ = conn.Close()
			b.mu.Lock()
			b.proc = proc
			b.mu.Unlock()
			return nil
		}
		if time.Now().After(deadline) {
			proc.stop()
			return fmt.Errorf("mosquitto did not accept connections on %s within %v", b.Addr(), startTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// findBinary locates mosquitto, or skips or fails the test.
func findBinary(tb testing.TB) string {
	tb.Helper()
	if path, err := exec.LookPath("mosquitto"); err == nil {
		return path
	}
	for _, path := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
		if _, err := os.Stat(path); err == nil {
			return path
		}
	}
	const msg = "mosquitto not found on PATH, in /usr/sbin or /usr/local/sbin (apt-get install -y mosquitto)"
	if os.Getenv(RequireEnv) == "1" {
		tb.Fatalf("mosquittotest: %s, and %s=1", msg, RequireEnv)
	}
	tb.Skipf("mosquittotest: %s; set %s=1 to fail instead", msg, RequireEnv)
	return ""
}

// freePort returns a loopback port that was free a moment ago.
func freePort(tb testing.TB) int {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("mosquittotest: find a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// syncBuffer collects mosquitto's output, written from exec's copying goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Len()
}

// Since returns a copy of what was written after the first n bytes.
func (s *syncBuffer) Since(n int) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.buf.Bytes()[n:])
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}
