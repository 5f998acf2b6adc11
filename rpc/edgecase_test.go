package rpc_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// A response topic with a wildcard is no response topic: the request is
// dropped and counted, nothing is published, and the server keeps its
// connection and serves on.
func TestWildcardResponseTopicIsDropped(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		svc := &echoService{}
		// A policy that admits everything: the wildcard check does not
		// depend on it.
		srv := startServer(t, b.url, svc, rpc.WithServerID("dev-1"), rpc.WithResponseTopicPolicy(func(string) bool { return true }))
		raw := newRawClient(t, b.url, uniqueID("raw-wild"))
		// (A control character in a ResponseTopic cannot be tested from
		// outside: Mosquitto disconnects the client that sends one.)
		for _, rt := range []string{"mqttrpc/responses/#", "mqttrpc/+/x"} {
			_, err := raw.Publish(testCtx(t), &paho.Publish{
				Topic: "mqttrpc/" + echoServiceName + "/dev-1/Echo", QoS: 1, Payload: []byte(`"x"`),
				Properties: &paho.PublishProperties{ResponseTopic: rt, CorrelationData: []byte("c-" + rt), ContentType: "application/json", MessageExpiry: u32(30)},
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		// Mosquitto forwards the wildcard; mochi strips a ResponseTopic
		// with one (MQTT-3.3.2-14), which leaves none.
		reason := rpc.DropBadResponseTopic
		if b.tb != nil {
			reason = rpc.DropNoResponseTopic
		}
		waitFor(t, func() bool { return srv.Stats().Dropped[reason] == 2 })
		client := newClient(t, b.url)
		if got, err := echo(testCtx(t), client, "fine", rpc.To("dev-1")); err != nil || got != "fine" {
			t.Fatalf("after the bad requests: %q, %v", got, err)
		}
		if n := svc.calls.Load(); n != 1 {
			t.Errorf("handler ran %d times, want 1 (the bad requests are not executed)", n)
		}
	})
}

// The $ rule: a policy of "#" does not admit $SYS topics (MQTT-4.7.2-1).
func TestResponseTopicFilterDollarRule(t *testing.T) {
	allow := rpc.ResponseTopicFilter("#", "+/responses/+")
	for topic, want := range map[string]bool{
		"mqttrpc/responses/a": true,
		"$SYS/broker/x":       false,
		"$share/g/responses":  false,
		"x/responses/y":       true,
	} {
		if got := allow(topic); got != want {
			t.Errorf("allow(%q) = %v, want %v", topic, got, want)
		}
	}
	if !rpc.ResponseTopicFilter("$SYS/#")("$SYS/x") {
		t.Error(`"$SYS/#" should match "$SYS/x"`)
	}
}

// gRPC's status message case: whitespace, control characters and non-BMP
// text arrive intact, through Mosquitto too (which refuses control
// characters in MQTT strings), and the server keeps its connection.
func TestErrorMessageArrivesIntact(t *testing.T) {
	const message = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n 100% \x7f\u0085"
	eachBroker(t, func(t *testing.T, b *broker) {
		svc := &echoService{handle: func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			if in.GetValue() == "fail" {
				return nil, rpc.Errorf(rpc.Unknown, "%s", message)
			}
			return in, nil
		}}
		startServer(t, b.url, svc, rpc.WithServerID("dev-1"))
		client := newClient(t, b.url)
		ctx := shortCtx(t, 20*time.Second)
		_, err := echo(ctx, client, "fail", rpc.To("dev-1"))
		if e := wantCode(t, err, rpc.Unknown); e.Message() != message {
			t.Errorf("message = %q, want %q", e.Message(), message)
		}
		if got, err := echo(ctx, client, "ok", rpc.To("dev-1")); err != nil || got != "ok" {
			t.Fatalf("after the error: %q, %v", got, err)
		}

		// On the wire it is a valid MQTT string, readable where it can be.
		raw := newRawClient(t, b.url, uniqueID("raw-msg"))
		rt := "mqttrpc/responses/" + raw.ClientID()
		raw.SubscribeTo(t, rt)
		if _, err := raw.Publish(ctx, &paho.Publish{
			Topic: "mqttrpc/" + echoServiceName + "/dev-1/Echo", QoS: 1, Payload: []byte(`"fail"`),
			Properties: &paho.PublishProperties{ResponseTopic: rt, CorrelationData: []byte("m"), ContentType: "application/json", MessageExpiry: u32(30)},
		}); err != nil {
			t.Fatal(err)
		}
		p := raw.Next(10 * time.Second)
		if p == nil {
			t.Fatal("no answer")
		}
		wire := userProps(p)["mqttrpc-message"]
		if strings.ContainsAny(wire, "\t\n\r\x7f\u0085") || !strings.Contains(wire, "☺ and non-BMP 😈") || !strings.Contains(wire, "100%25") {
			t.Errorf("mqttrpc-message on the wire = %q", wire)
		}
	})
}

// Metadata values that are not MQTT strings are refused before anything is
// sent; keys ending in -bin carry bytes (base64 on the wire).
func TestMetadataValues(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		svc := &echoService{handle: func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			call, _ := rpc.CallFromContext(ctx)
			return wrapperspb.String(fmt.Sprintf("%x|%s", call.RequestMetadata().Get("blob-bin"), call.RequestMetadata().Get("note"))), nil
		}}
		startServer(t, b.url, svc, rpc.WithServerID("dev-1"))
		client := newClient(t, b.url, rpc.WithRetry(rpc.RetryPolicy{MaxAttempts: 5}))
		ctx := shortCtx(t, 20*time.Second)
		for _, md := range []rpc.Metadata{
			{"note": {"line\nbreak"}},
			{"note": {"\xab\xab\xab"}},
			{"bad\x00key": {"v"}},
			{"": {"v"}},
		} {
			_, err := echo(ctx, client, "x", rpc.To("dev-1"), rpc.WithMetadata(md))
			wantCode(t, err, rpc.InvalidArgument)
		}
		if n := svc.calls.Load(); n != 0 {
			t.Fatalf("handler ran %d times for refused metadata", n)
		}
		got, err := echo(ctx, client, "x", rpc.To("dev-1"), rpc.WithMetadata(rpc.Metadata{"blob-bin": {"\xab\xab\xab\n\x00"}, "note": {"plain ☺"}}))
		if err != nil || got != "ababab0a00|plain ☺" {
			t.Fatalf("binary metadata: %q, %v", got, err)
		}
	})
}

// When the server's cap on a call's time passes before the caller's
// deadline, the caller hears DeadlineExceeded from the server then, even
// if the handler ignores its context.
func TestMaxTimeoutAnswersDeadlineExceeded(t *testing.T) {
	b := newTestbroker(t)
	release := make(chan struct{})
	svc := &echoService{handle: func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		<-release // ignores ctx
		return in, nil
	}}
	srv := startServer(t, b.url, svc, rpc.WithServerID("dev-1"), rpc.WithMaxTimeout(300*time.Millisecond))
	defer close(release)
	client := newClient(t, b.url)
	_, err := echo(shortCtx(t, 30*time.Second), client, "x", rpc.To("dev-1"))
	e := wantCode(t, err, rpc.DeadlineExceeded)
	if !rpc.IsWireError(err) || !contains(e.Message(), "WithMaxTimeout") {
		t.Errorf("error %v (wire %v): want the server's DeadlineExceeded", err, rpc.IsWireError(err))
	}
	// Counted once the broker took the answer, which may be after the
	// caller has it.
	waitFor(t, func() bool { return srv.Stats().Served == 1 })
}

// Options given values that cannot work are refused with InvalidArgument
// naming the option.
func TestOptionValidation(t *testing.T) {
	b := newTestbroker(t)
	conn := dial(t, b.url, rpc.WithClientID(uniqueID("opts")))
	for name, opt := range map[string]rpc.ServerOption{
		"WithMaxTimeout":        rpc.WithMaxTimeout(0),
		"WithConcurrency":       rpc.WithConcurrency(0),
		"WithQueueSize":         rpc.WithQueueSize(-1),
		"WithMethodConcurrency": rpc.WithMethodConcurrency(-2),
		"WithMaxPayload":        rpc.WithMaxPayload(0),
		"WithDefaultTimeout":    rpc.WithDefaultTimeout(-time.Second),
		"WithDedupLimits":       rpc.WithDedupLimits(0, 10),
	} {
		srv := rpc.NewServer(conn, rpc.WithServerID("dev-1"), opt)
		srv.RegisterService(&echoDesc, &echoService{})
		err := srv.Start(testCtx(t))
		if e := wantCode(t, err, rpc.InvalidArgument); !contains(e.Message(), name) {
			t.Errorf("%s: message %q does not name the option", name, e.Message())
		}
	}
	for name, opt := range map[string]rpc.ClientOption{
		"WithDefaultTimeout": rpc.WithDefaultTimeout(0),
		"WithMaxPayload":     rpc.WithMaxPayload(-1),
		"WithRetry":          rpc.WithRetry(rpc.RetryPolicy{MaxAttempts: -1}),
	} {
		client := rpc.NewClient(conn, opt)
		_, err := echo(testCtx(t), client, "x", rpc.To("dev-1"))
		if e := wantCode(t, err, rpc.InvalidArgument); !contains(e.Message(), name) {
			t.Errorf("%s: message %q does not name the option", name, e.Message())
		}
		_ = client.Close(testCtx(t))
	}
}

// Service and method names that no topic can carry are refused at
// registration.
func TestRegisterServiceValidatesNames(t *testing.T) {
	b := newTestbroker(t)
	conn := dial(t, b.url, rpc.WithClientID(uniqueID("names")))
	for _, tc := range []struct{ service, method, want string }{
		{echoServiceName, "", "method name"},
		{echoServiceName, "Echo/x", "method name"},
		{echoServiceName, "Echo+", "method name"},
		{"", "Echo", "service name"},
		{"a/b", "Echo", "service name"},
	} {
		desc := echoDesc
		desc.ServiceName = tc.service
		desc.Methods = append([]rpc.MethodDesc(nil), echoDesc.Methods...)
		desc.Methods[0].MethodName = tc.method
		func() {
			defer func() {
				r := recover()
				if r == nil || !strings.Contains(r.(string), tc.want) {
					t.Errorf("RegisterService(%q, %q): panic %v, want one naming the %s", tc.service, tc.method, r, tc.want)
				}
			}()
			rpc.NewServer(conn, rpc.WithServerID("dev-1")).RegisterService(&desc, &echoService{})
		}()
	}
}

// A QoS 1 request without CorrelationData (as mosquitto_rr sends) that the
// broker redelivers after the server's connection was cut runs once: the
// copy has DUP set and the same packet identifier on the server's session.
func TestRedeliveryWithoutCorrelationDataRunsOnce(t *testing.T) {
	b := newTestbroker(t)
	started := make(chan struct{}, 4)
	release := make(chan struct{})
	svc := &echoService{handle: func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		started <- struct{}{}
		<-release
		return in, nil
	}}
	const serverClientID = "dev-1-redelivery"
	conn := dial(t, b.url, rpc.WithClientID(serverClientID), rpc.WithSessionExpiry(time.Minute))
	srv := rpc.NewServer(conn, rpc.WithServerID("dev-1"))
	srv.RegisterService(&echoDesc, svc)
	if err := srv.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })

	raw := newRawClient(t, b.url, uniqueID("raw-nocorr"))
	rt := "mqttrpc/responses/" + raw.ClientID()
	raw.SubscribeTo(t, rt)
	if _, err := raw.Publish(testCtx(t), &paho.Publish{
		Topic: "mqttrpc/" + echoServiceName + "/dev-1/Echo", QoS: 1, Payload: []byte(`"once"`),
		Properties: &paho.PublishProperties{ResponseTopic: rt, ContentType: "application/json", MessageExpiry: u32(30)},
	}); err != nil {
		t.Fatal(err)
	}
	<-started
	// Cut the server's connection before it acknowledged: the broker
	// redelivers the request on the resumed session.
	if err := b.tb.Disconnect(serverClientID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return srv.Stats().Dropped[rpc.DropDuplicate] == 1 })
	close(release)
	p := raw.Next(10 * time.Second)
	if p == nil || string(p.Payload) != `"once"` {
		t.Fatalf("answer = %v", p)
	}
	if n := svc.calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}
