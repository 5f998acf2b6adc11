package otelrpc_test

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// rawClient is a bare paho client that knows nothing of mqttrpc or
// OpenTelemetry: it stands for any MQTT client that calls a server.
type rawClient struct {
	*paho.Client
	received chan *paho.Publish
}

func newRawClient(t *testing.T, brokerURL, clientID string) *rawClient {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(brokerURL, "mqtt://"))
	if err != nil {
		t.Fatal(err)
	}
	rc := &rawClient{received: make(chan *paho.Publish, 16)}
	rc.Client = paho.NewClient(paho.ClientConfig{
		Conn:     conn,
		ClientID: clientID,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			rc.received <- pr.Packet
			return true, nil
		}},
	})
	if _, err := rc.Connect(testCtx(t), &paho.Connect{ClientID: clientID, CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rc.Disconnect(&paho.Disconnect{}) })
	return rc
}

func (rc *rawClient) subscribe(t *testing.T, filter string) {
	t.Helper()
	if _, err := rc.Subscribe(testCtx(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
}

func (rc *rawClient) publish(t *testing.T, topic string, props *paho.PublishProperties, payload string) {
	t.Helper()
	if _, err := rc.Publish(testCtx(t), &paho.Publish{Topic: topic, QoS: 1, Properties: props, Payload: []byte(payload)}); err != nil {
		t.Fatal(err)
	}
}

// next returns the next message received, or nil after wait.
func (rc *rawClient) next(wait time.Duration) *paho.Publish {
	select {
	case p := <-rc.received:
		return p
	case <-time.After(wait):
		return nil
	}
}

func userProperty(p *paho.Publish, key string) string {
	return p.Properties.User.Get(key)
}
