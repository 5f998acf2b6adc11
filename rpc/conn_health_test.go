package rpc_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/internal/mosquittotest"
	"github.com/mqttrpc/mqttrpc/internal/rpctest"
	"github.com/mqttrpc/mqttrpc/rpc"
)

// logRecorder is a slog.Handler that keeps every record, for tests that
// count what a Conn logs.
type logRecorder struct {
	mu      sync.Mutex
	records []logRecord
}

type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	lr := logRecord{level: rec.Level, msg: rec.Message, attrs: map[string]string{}}
	rec.Attrs(func(a slog.Attr) bool {
		lr.attrs[a.Key] = a.Value.String()
		return true
	})
	r.mu.Lock()
	r.records = append(r.records, lr)
	r.mu.Unlock()
	return nil
}

// count returns how many records at level or above contain msg.
func (r *logRecorder) count(level slog.Level, msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.records {
		if rec.level >= level && strings.Contains(rec.msg, msg) {
			n++
		}
	}
	return n
}

// all returns every record as text, for failure messages and for looking
// for secrets.
func (r *logRecorder) all() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, rec := range r.records {
		b.WriteString(rec.level.String() + " " + rec.msg)
		for k, v := range rec.attrs {
			b.WriteString(" " + k + "=" + v)
		}
		b.WriteString("\n")
	}
	return b.String()
}

func (r *logRecorder) find(level slog.Level, msg string) (logRecord, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.records {
		if rec.level == level && strings.Contains(rec.msg, msg) {
			return rec, true
		}
	}
	return logRecord{}, false
}

// Two Conns with one client ID take each other's session over. Before
// backoff they did so about 2,000 times a second on Mosquitto; now each
// takeover is logged at Warn and the reconnects back off, so a window of
// three seconds sees a few dozen connections at most.
func TestConnTakeoverBacksOff(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		id := uniqueID("twin")
		logs := new(logRecorder)
		logger := slog.New(logs)
		a := dial(t, b.url, rpc.WithClientID(id), rpc.WithLogger(logger))
		// The second Dial may be kicked out before it returns: give it time.
		twin := dial(t, b.url, rpc.WithClientID(id), rpc.WithLogger(logger), rpc.WithDialTimeout(20*time.Second))
		_ = a
		_ = twin

		const window = 3 * time.Second
		start := logs.count(slog.LevelDebug, "mqttrpc: connected")
		<-time.After(window) // a measuring window, not a synchronisation
		connections := logs.count(slog.LevelDebug, "mqttrpc: connected") - start
		warnings := logs.count(slog.LevelWarn, "")
		t.Logf("%s: %d connections in %v, %d warnings", b.name, connections, window, warnings)
		if connections > 60 {
			t.Errorf("%d connections in %v with one client ID; want a few dozen at most", connections, window)
		}
		if warnings == 0 {
			t.Errorf("no takeover warning logged; logs:\n%s", logs.all())
		}
		rec, ok := logs.find(slog.LevelWarn, "client ID")
		if !ok || rec.attrs["client_id"] != id {
			t.Errorf("no Warn record naming the client ID %q; logs:\n%s", id, logs.all())
		}
	})
}

// refusedAddr returns a loopback address nobody listens on.
func refusedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// Dial without a broker fails with Unavailable after the dial timeout,
// naming the URL and the last connect error, and warns while it retries;
// with the default timeout it returns within seconds even when ctx has no
// deadline.
func TestConnDialWithoutBroker(t *testing.T) {
	t.Parallel()
	url := "mqtt://" + refusedAddr(t)
	for _, tc := range []struct {
		name    string
		opts    []rpc.ConnOption
		atLeast time.Duration
		atMost  time.Duration
	}{
		{"explicit timeout", []rpc.ConnOption{rpc.WithDialTimeout(time.Second)}, time.Second, 8 * time.Second},
		{"default timeout", nil, rpc.DefaultDialTimeout, rpc.DefaultDialTimeout + 8*time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			logs := new(logRecorder)
			opts := append(tc.opts, rpc.WithLogger(slog.New(logs)))
			type result struct {
				conn *rpc.Conn
				err  error
			}
			done := make(chan result, 1)
			start := time.Now()
			go func() {
				conn, err := rpc.Dial(context.Background(), url, opts...)
				done <- result{conn, err}
			}()
			var res result
			select {
			case res = <-done:
			case <-time.After(tc.atMost + 10*time.Second):
				t.Fatalf("Dial(context.Background(), %s) still waiting after %v", url, tc.atMost+10*time.Second)
			}
			elapsed := time.Since(start)
			if res.err == nil {
				_ = res.conn.Close(context.Background())
				t.Fatal("Dial succeeded without a broker")
			}
			e := wantCode(t, res.err, rpc.Unavailable)
			if !contains(e.Message(), url) || !contains(e.Message(), "connection refused") {
				t.Errorf("message %q names neither the URL %s nor the connect error", e.Message(), url)
			}
			if elapsed < tc.atLeast-50*time.Millisecond || elapsed > tc.atMost {
				t.Errorf("Dial returned after %v, want about %v", elapsed, tc.atLeast)
			}
			if logs.count(slog.LevelWarn, "cannot connect") == 0 {
				t.Errorf("no connect error logged at Warn; logs:\n%s", logs.all())
			}
		})
	}
}

// Credentials in the broker URL are sent; an explicit WithCredentials wins;
// the password appears in no error and no log.
func TestConnDialURLCredentials(t *testing.T) {
	t.Parallel()
	passwords := rpctest.PasswordFile(t, map[string]string{"alice": "s3cret-pw"})
	mq := mosquittotest.Start(t, mosquittotest.WithAnonymous(false), mosquittotest.WithConfig("password_file "+passwords))
	logs := new(logRecorder)
	logger := rpc.WithLogger(slog.New(logs))

	conn := dial(t, "mqtt://alice:s3cret-pw@"+mq.Addr(), logger)
	_ = conn.Close(context.Background())

	conn = dial(t, "mqtt://alice:wrong-pw@"+mq.Addr(), rpc.WithCredentials("alice", "s3cret-pw"), logger)
	_ = conn.Close(context.Background())

	// Percent-encoded characters in the password are decoded.
	passwords2 := rpctest.PasswordFile(t, map[string]string{"bob": "p@ss:w/rd"})
	mq2 := mosquittotest.Start(t, mosquittotest.WithAnonymous(false), mosquittotest.WithConfig("password_file "+passwords2))
	conn = dial(t, "mqtt://bob:p%40ss%3Aw%2Frd@"+mq2.Addr(), logger)
	_ = conn.Close(context.Background())

	_, err := rpc.Dial(testCtx(t), "mqtt://alice:wrong-pw@"+mq.Addr(), logger)
	e := wantCode(t, err, rpc.PermissionDenied) // Mosquitto's 0x87
	if contains(e.Error(), "wrong-pw") || contains(logs.all(), "wrong-pw") || contains(logs.all(), "s3cret-pw") {
		t.Errorf("a password leaked: error %q; logs:\n%s", e, logs.all())
	}
	if !contains(e.Message(), "alice@"+mq.Addr()) {
		t.Errorf("message %q does not name the broker and user", e.Message())
	}
}

// A broker that refuses the login ends Dial at once with a code and the
// reason in words, instead of retrying until the dial timeout. Mosquitto
// 2.0 answers every refused login with CONNACK 0x87 (not authorized); the
// other refusals are tested on a broker that sends them
// (conn_refusal_internal_test.go).
func TestConnDialRefusedLogin(t *testing.T) {
	t.Parallel()
	passwords := rpctest.PasswordFile(t, map[string]string{"alice": "s3cret-pw"})
	mq := mosquittotest.Start(t, mosquittotest.WithAnonymous(false), mosquittotest.WithConfig("password_file "+passwords))
	for _, tc := range []struct {
		name string
		url  string
	}{
		{"bad password", "mqtt://alice:wrong@" + mq.Addr()},
		{"unknown user", "mqtt://mallory:x@" + mq.Addr()},
		{"no credentials", "mqtt://" + mq.Addr()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			conn, err := rpc.Dial(testCtx(t), tc.url, rpc.WithDialTimeout(30*time.Second))
			if err == nil {
				_ = conn.Close(context.Background())
				t.Fatal("Dial succeeded")
			}
			if elapsed := time.Since(start); elapsed > 5*time.Second {
				t.Errorf("Dial took %v to give up on a refused login", elapsed)
			}
			e := wantCode(t, err, rpc.PermissionDenied)
			if want := "not authorized (CONNACK 0x87)"; !contains(e.Message(), want) || !contains(e.Message(), mq.Addr()) {
				t.Errorf("message %q, want the broker's address and %q", e.Message(), want)
			}
		})
	}
}

// Close with a context that has ended returns at once; the connection
// manager stops on its own, and a second Close waits for it, so nothing of
// the Conn outlives it (goleak checks at the end of the package's tests).
func TestConnCloseAgainWaitsForTheManager(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		conn, err := rpc.Dial(testCtx(t), b.url)
		if err != nil {
			t.Fatal(err)
		}
		ended, cancel := context.WithCancel(context.Background())
		cancel()
		if err := conn.Close(ended); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Close with an ended context: %v", err)
		}
		if err := conn.Close(testCtx(t)); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
}

// NewConnection refuses the ConnOptions it cannot honour instead of
// dropping them.
func TestConnNewConnectionRefusesDialOptions(t *testing.T) {
	t.Parallel()
	_, err := rpc.NewConnection(context.Background(), autopaho.ClientConfig{ClientConfig: paho.ClientConfig{ClientID: "x"}}, rpc.WithClientID("y"))
	wantCode(t, err, rpc.InvalidArgument)
}
