package rpc_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// A request delivered twice by the broker runs once; the caller gets its answer.
func TestDuplicateDeliveryRunsOnce(t *testing.T) {
	b := newTestbroker(t)
	svc := &echoService{}
	srv := startServer(t, b.url, svc, rpc.WithServerID("dev-1"))
	client := newClient(t, b.url)
	b.tb.DuplicatePublishes("mqttrpc/+/dev-1/+", 1)
	if got, err := echo(testCtx(t), client, "once", rpc.To("dev-1")); err != nil || got != "once" {
		t.Fatalf("call: %q, %v", got, err)
	}
	waitFor(t, func() bool { return srv.Stats().Dropped[rpc.DropDuplicate] == 1 })
	if n := svc.calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times for one call delivered twice", n)
	}
}

// A duplicate that arrives after the answer gets the cached answer again; one
// that arrives while the original runs is answered by the original.
func TestDuplicateGetsCachedAnswer(t *testing.T) {
	b := newTestbroker(t)
	var running atomic.Bool
	release := make(chan struct{})
	svc := &echoService{}
	svc.handle = func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		running.Store(true)
		<-release
		return wrapperspb.String("answer to " + in.GetValue()), nil
	}
	srv := startServer(t, b.url, svc, rpc.WithServerID("dev-1"))
	raw := newRawClient(t, b.url, "raw-dup")
	const responseTopic = "mqttrpc/responses/raw-dup"
	raw.SubscribeTo(t, responseTopic)
	send := func() {
		t.Helper()
		_, err := raw.Publish(testCtx(t), &paho.Publish{
			Topic: "mqttrpc/" + echoServiceName + "/dev-1/Echo", QoS: 1, Payload: []byte(`"x"`),
			Properties: &paho.PublishProperties{ResponseTopic: responseTopic, CorrelationData: []byte("same-call"), ContentType: "application/json", MessageExpiry: u32(30)},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	send()
	waitFor(t, running.Load)
	send() // while the original runs
	waitFor(t, func() bool { return srv.Stats().Dropped[rpc.DropDuplicate] == 1 })
	close(release)
	first := raw.Next(10 * time.Second)
	if first == nil || string(first.Payload) != `"answer to x"` {
		t.Fatalf("first answer %v", first)
	}
	send() // after the answer
	again := raw.Next(10 * time.Second)
	if again == nil || string(again.Payload) != `"answer to x"` || string(again.Properties.CorrelationData) != "same-call" {
		t.Fatalf("cached answer %v", again)
	}
	if n := svc.calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times for three deliveries of one call", n)
	}
	if st := srv.Stats(); st.Dropped[rpc.DropDuplicate] != 2 {
		t.Fatalf("duplicates = %d, want 2", st.Dropped[rpc.DropDuplicate])
	}
}
