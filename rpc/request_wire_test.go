package rpc_test

import (
	"context"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/codec"
	"github.com/mqttrpc/mqttrpc/rpc"
)

// TestRequestWireFormat watches, with a bare MQTT client, the requests an
// rpc.Client publishes and checks every property the protocol prescribes.
func TestRequestWireFormat(t *testing.T) {
	b := newTestbroker(t)
	spy := newRawClient(t, b.url, "spy")
	spy.SubscribeTo(t, "mqttrpc/"+echoServiceName+"/#")
	conn := dial(t, b.url, rpc.WithClientID("wire-caller"))
	client := rpc.NewClient(conn)
	t.Cleanup(func() { _ = client.Close(context.Background()) })

	for _, tc := range []struct {
		codec    codec.Codec
		qos      rpc.QoS
		deadline time.Duration
	}{
		{codec.Proto, rpc.QoS1, 2500 * time.Millisecond},
		{codec.JSON, rpc.QoS2, 800 * time.Millisecond},
		{codec.Proto, rpc.QoS0, 10 * time.Second},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), tc.deadline)
		// Nobody serves dev-9: the call ends at its deadline, the spy sees the request.
		go func() {
			defer cancel()
			_, _ = echo(ctx, client, "x", rpc.To("dev-9"), rpc.WithCodec(tc.codec), rpc.WithQoS(tc.qos), rpc.WithMetadata(rpc.Metadata{"x-tenant": {"acme"}}))
		}()
		p := spy.Next(5 * time.Second)
		cancel()
		if p == nil {
			t.Fatal("no request seen")
		}
		up := userProps(p)
		id, err := uuid.FromBytes(p.Properties.CorrelationData)
		timeout, _ := strconv.Atoi(up["mqttrpc-timeout"])
		switch {
		case p.Topic != "mqttrpc/"+echoServiceName+"/dev-9/Echo":
			t.Errorf("topic %q", p.Topic)
		case p.QoS != byte(tc.qos):
			t.Errorf("QoS %d, want %d", p.QoS, tc.qos)
		case p.Properties.ResponseTopic != "mqttrpc/responses/wire-caller":
			t.Errorf("response topic %q", p.Properties.ResponseTopic)
		case err != nil || id.Version() != 7:
			t.Errorf("correlation data %x is not a UUIDv7 (%v)", p.Properties.CorrelationData, err)
		case p.Properties.MessageExpiry == nil || *p.Properties.MessageExpiry < 1 || time.Duration(*p.Properties.MessageExpiry)*time.Second > tc.deadline+time.Second:
			t.Errorf("message expiry %v for a %v deadline", p.Properties.MessageExpiry, tc.deadline)
		case hasUserProperty(p, "mqttrpc-version"):
			t.Errorf("mqttrpc-version %q sent; absent means 1", up["mqttrpc-version"])
		case timeout <= 0 || time.Duration(timeout)*time.Millisecond > tc.deadline:
			t.Errorf("mqttrpc-timeout %q for a %v deadline", up["mqttrpc-timeout"], tc.deadline)
		case tc.codec == codec.JSON && p.Properties.ContentType != codec.ContentTypeJSON:
			t.Errorf("JSON request with content type %q", p.Properties.ContentType)
		case tc.codec == codec.Proto && p.Properties.ContentType != "":
			t.Errorf("protobuf request with content type %q; absent means protobuf", p.Properties.ContentType)
		case tc.codec == codec.JSON && (p.Properties.PayloadFormat == nil || *p.Properties.PayloadFormat != 1):
			t.Errorf("JSON request without payload format indicator 1")
		case tc.codec == codec.Proto && p.Properties.PayloadFormat != nil:
			t.Errorf("protobuf request with a payload format indicator")
		case up["x-tenant"] != "acme":
			t.Errorf("metadata missing: %v", up)
		}
		// The cancelled caller sends the cancel message (protocol.md,
		// "Cancellation"): the request's topic, QoS, ResponseTopic and
		// CorrelationData, mqttrpc-cancel: 1, no payload.
		c := spy.Next(5 * time.Second)
		switch {
		case c == nil:
			t.Fatal("no cancel message seen")
		case c.Topic != p.Topic || c.QoS != p.QoS || c.Properties.ResponseTopic != p.Properties.ResponseTopic || string(c.Properties.CorrelationData) != string(p.Properties.CorrelationData):
			t.Errorf("cancel message on %q QoS %d, response topic %q, correlation %x; want the request's", c.Topic, c.QoS, c.Properties.ResponseTopic, c.Properties.CorrelationData)
		case userProps(c)["mqttrpc-cancel"] != "1" || len(c.Payload) != 0:
			t.Errorf("cancel message properties %v, payload %q", userProps(c), c.Payload)
		}
	}
}

// An application that owns its autopaho configuration shares the connection:
// its own handler keeps getting its messages, its own publishes go through
// the manager, and RPC works beside them.
func TestNewConnectionSharesTheApplicationsConnection(t *testing.T) {
	b := newTestbroker(t)
	startServer(t, b.url, &echoService{}, rpc.WithServerID("dev-1"))
	u, err := url.Parse(b.url)
	if err != nil {
		t.Fatal(err)
	}
	appMessages := make(chan string, 4)
	var ups int
	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		OnConnectionUp:                func(*autopaho.ConnectionManager, *paho.Connack) { ups++ },
		ClientConfig: paho.ClientConfig{
			ClientID: "app-1",
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				if !pr.AlreadyHandled {
					appMessages <- pr.Packet.Topic + "=" + string(pr.Packet.Payload)
				}
				return true, nil
			}},
		},
	}
	conn, err := rpc.NewConnection(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Manager().Disconnect(context.Background())
		_ = conn.Close(context.Background())
	})
	if err := conn.AwaitConnection(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Manager().Subscribe(testCtx(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "app/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	client := rpc.NewClient(conn)
	t.Cleanup(func() { _ = client.Close(context.Background()) })
	out := new(wrapperspb.StringValue)
	if err := client.Call(testCtx(t), echoServiceName, "Echo", wrapperspb.String("rpc"), out, rpc.To("dev-1")); err != nil || out.GetValue() != "rpc" {
		t.Fatalf("call: %q, %v", out.GetValue(), err)
	}
	if _, err := conn.Manager().Publish(testCtx(t), &paho.Publish{Topic: "app/hello", QoS: 1, Payload: []byte("world")}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-appMessages:
		if m != "app/hello=world" {
			t.Fatalf("application got %q", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the application's handler got nothing")
	}
	if len(appMessages) != 0 {
		t.Errorf("RPC traffic reached the application's handler: %q", <-appMessages)
	}
	if ups != 1 {
		t.Errorf("application's OnConnectionUp ran %d times, want 1", ups)
	}
}
