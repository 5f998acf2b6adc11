package rpc

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// refusingBroker is a mochi broker that refuses what the test tells it to,
// with the reason codes a stricter or smaller broker sends: a CONNACK
// refusal, SUBACK and UNSUBACK refusals, a CONNACK that says shared
// subscriptions are not available.
type refusingBroker struct {
	url  string
	hook *refusingHook
}

type refusingHook struct {
	mqtt.HookBase

	mu        sync.Mutex
	connack   byte // refuse CONNECT with this code (0: accept)
	suback    byte // refuse every SUBSCRIBE filter with this code (0: grant)
	subackN   int  // refuse only this many SUBSCRIBEs with suback (0: all)
	unsuback  byte // refuse every UNSUBSCRIBE filter with this code (0: accept)
	noShared  bool // CONNACK says Shared Subscription Available: 0
	subscribe int  // SUBSCRIBE packets seen
}

func (h *refusingHook) ID() string { return "refusing" }

func (h *refusingHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPacketEncode}, []byte{b})
}

func (h *refusingHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.connack == 0
}

func (h *refusingHook) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

func (h *refusingHook) OnPacketEncode(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch pk.FixedHeader.Type {
	case packets.Connack:
		if h.connack != 0 {
			pk.ReasonCode = h.connack
		}
		if h.noShared {
			pk.Properties.SharedSubAvailable, pk.Properties.SharedSubAvailableFlag = 0, true
		}
	case packets.Suback:
		h.subscribe++
		if h.suback != 0 && (h.subackN == 0 || h.subscribe <= h.subackN) {
			pk.ReasonCodes = bytes.Repeat([]byte{h.suback}, len(pk.ReasonCodes))
		}
	case packets.Unsuback:
		if h.unsuback != 0 {
			pk.ReasonCodes = bytes.Repeat([]byte{h.unsuback}, len(pk.ReasonCodes))
		}
	}
	return pk
}

func (h *refusingHook) set(f func(h *refusingHook)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f(h)
}

func startRefusingBroker(t *testing.T) *refusingBroker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), SysTopicResendInterval: 3600})
	hook := new(refusingHook)
	if err := server.AddHook(hook, nil); err != nil {
		t.Fatal(err)
	}
	if err := server.AddListener(listeners.NewNet("refusing", ln)); err != nil {
		t.Fatal(err)
	}
	if err := server.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Stock mochi's Close deadlocks with a client that is being
		// removed at that moment (Clients.GetByListener read-locks the
		// map twice, and Delete's write lock waits in between; see
		// testbroker/listener.go): the test's connections are closed by
		// now, so wait until mochi has let them go.
		for deadline := time.Now().Add(hangGuard); server.Clients.Len() > 0 && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		_ = server.Close()
	})
	return &refusingBroker{url: "mqtt://" + ln.Addr().String(), hook: hook}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*hangGuard)
	t.Cleanup(cancel)
	return ctx
}

// Permanent CONNACK refusals end Dial at once with a fitting code and the
// reason in words; transient ones are retried until the dial timeout.
func TestConnDialConnackRefusals(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		reason byte
		code   Code
		text   string
	}{
		{0x84, FailedPrecondition, "unsupported protocol version (CONNACK 0x84)"},
		{0x85, InvalidArgument, "client identifier not valid (CONNACK 0x85)"},
		{0x86, Unauthenticated, "bad user name or password (CONNACK 0x86)"},
		{0x87, PermissionDenied, "not authorized (CONNACK 0x87)"},
		{0x8A, PermissionDenied, "banned (CONNACK 0x8a)"},
		{0x8C, Unauthenticated, "bad authentication method (CONNACK 0x8c)"},
		{0x89, Unavailable, "server busy (CONNACK 0x89)"}, // transient: retried
	} {
		t.Run(tc.text, func(t *testing.T) {
			t.Parallel()
			b := startRefusingBroker(t)
			b.hook.set(func(h *refusingHook) { h.connack = tc.reason })
			dialTimeout := 20 * time.Second
			if tc.code == Unavailable {
				dialTimeout = 500 * time.Millisecond
			}
			start := time.Now()
			conn, err := Dial(testContext(t), b.url, WithDialTimeout(dialTimeout))
			if err == nil {
				_ = conn.Close(context.Background())
				t.Fatal("Dial succeeded")
			}
			if elapsed := time.Since(start); tc.code != Unavailable && elapsed > 5*time.Second {
				t.Errorf("Dial took %v to give up on a permanent refusal", elapsed)
			}
			if CodeOf(err) != tc.code {
				t.Fatalf("code %v (%v), want %v", CodeOf(err), err, tc.code)
			}
			var e *Error
			if !errors.As(err, &e) || !strings.Contains(e.Message(), tc.text) || !strings.Contains(e.Message(), b.url) {
				t.Errorf("message %q: want the broker %s and %q", err, b.url, tc.text)
			}
		})
	}
}

// A refused SUBSCRIBE is never Unavailable, which Server.Start would take
// for "not connected yet" and start deaf: Start fails with the reason in
// words.
func TestConnSubscribeRefusals(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		reason byte
		code   Code
		text   string
	}{
		{0x80, Unknown, "unspecified error (SUBACK 0x80)"},
		{0x83, Unknown, "implementation specific error (SUBACK 0x83)"},
		{0x87, PermissionDenied, "not authorized (SUBACK 0x87)"},
		{0x8F, InvalidArgument, "topic filter invalid (SUBACK 0x8f)"},
		{0x97, ResourceExhausted, "quota exceeded (SUBACK 0x97)"},
		{0x9E, FailedPrecondition, "does not support shared subscriptions"},
		{0xA2, FailedPrecondition, "does not support wildcard subscriptions (SUBACK 0xa2)"},
	} {
		t.Run(tc.text, func(t *testing.T) {
			t.Parallel()
			b := startRefusingBroker(t)
			b.hook.set(func(h *refusingHook) { h.suback = tc.reason })
			conn, err := Dial(testContext(t), b.url)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = conn.Close(context.Background()) }()
			srv := NewServer(conn, WithServerID("dev-1"))
			srv.RegisterService(&refusalEchoDesc, struct{}{})
			err = srv.Start(testContext(t))
			defer func() { _ = srv.Shutdown(context.Background()) }()
			if CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("Start: %v; want %v with %q", err, tc.code, tc.text)
			}
		})
	}
}

// A broker whose CONNACK says Shared Subscription Available: 0 makes a
// share group's Start fail with FailedPrecondition naming the missing
// feature, as SUBACK 0x9E does, not with paho's "invalid arguments".
func TestConnSharedSubscriptionsUnavailable(t *testing.T) {
	t.Parallel()
	b := startRefusingBroker(t)
	b.hook.set(func(h *refusingHook) { h.noShared = true })
	conn, err := Dial(testContext(t), b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	srv := NewServer(conn, WithShareGroup("pool"))
	srv.RegisterService(&refusalEchoDesc, struct{}{})
	err = srv.Start(testContext(t))
	defer func() { _ = srv.Shutdown(context.Background()) }()
	if CodeOf(err) != FailedPrecondition || !strings.Contains(err.Error(), "does not support shared subscriptions") {
		t.Fatalf("Start: %v; want FailedPrecondition naming shared subscriptions", err)
	}
}

// A refused UNSUBSCRIBE is reported with the filter and the reason, and the
// filter, which the broker still delivers on, stays recorded (restored
// after a reconnect); a granted one is forgotten.
func TestConnUnsubscribeRefused(t *testing.T) {
	t.Parallel()
	b := startRefusingBroker(t)
	conn, err := Dial(testContext(t), b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	ctx := testContext(t)
	if err := conn.subscribe(ctx, []paho.SubscribeOptions{{Topic: "kept/+", QoS: 1}, {Topic: "gone/+", QoS: 1}}); err != nil {
		t.Fatal(err)
	}
	b.hook.set(func(h *refusingHook) { h.unsuback = 0x87 })
	err = conn.unsubscribe(ctx, []string{"kept/+"})
	if CodeOf(err) != PermissionDenied || !strings.Contains(err.Error(), `"kept/+"`) || !strings.Contains(err.Error(), "not authorized (UNSUBACK 0x87)") {
		t.Fatalf("unsubscribe: %v; want PermissionDenied naming the filter and the reason", err)
	}
	b.hook.set(func(h *refusingHook) { h.unsuback = 0 })
	if err := conn.unsubscribe(ctx, []string{"gone/+"}); err != nil {
		t.Fatalf("unsubscribe: %v", err)
	}
	conn.mu.Lock()
	_, kept := conn.subs["kept/+"]
	_, gone := conn.subs["gone/+"]
	conn.mu.Unlock()
	if !kept || gone {
		t.Errorf("recorded after unsubscribing: kept/+ %t (want true), gone/+ %t (want false)", kept, gone)
	}
}

// refusalEchoDesc is a one-method service for servers that never get a
// call.
var refusalEchoDesc = ServiceDesc{
	ServiceName: "test.v1.Refusal",
	HandlerType: (*any)(nil),
	Methods: []MethodDesc{{
		MethodName: "Echo",
		QoS:        QoS1,
		NewRequest: func() any { return new(wrapperspb.StringValue) },
		Handler: func(_ any, _ context.Context, req any) (any, error) {
			return req, nil
		},
	}},
}

// SUBACK 0x91 (packet identifier in use), which mochi sends when the
// identifier is one of its own PUBLISHes in flight to us, is retried with
// the next identifier.
func TestConnSubscribeRetriesIdentifierInUse(t *testing.T) {
	t.Parallel()
	b := startRefusingBroker(t)
	b.hook.set(func(h *refusingHook) { h.suback, h.subackN = 0x91, 2 })
	conn, err := Dial(testContext(t), b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	if err := conn.subscribe(testContext(t), []paho.SubscribeOptions{{Topic: "a/+", QoS: 1}}); err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	b.hook.set(func(h *refusingHook) {
		if h.subscribe != 3 {
			t.Errorf("%d SUBSCRIBEs, want 3 (two refused with 0x91, then granted)", h.subscribe)
		}
	})
}
