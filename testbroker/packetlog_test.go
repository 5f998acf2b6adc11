package testbroker_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/testbroker"
)

// syncBuffer is a bytes.Buffer for a logger written from mochi's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// WithPacketLog logs each packet both ways with what matters (a PUBLISH's
// topic, QoS, properties), and never a payload.
func TestWithPacketLog(t *testing.T) {
	t.Parallel()
	var out syncBuffer
	broker := testbroker.Start(t, testbroker.WithPacketLog(slog.New(slog.NewTextHandler(&out, nil))))
	sub := connect(t, broker.Addr(), "log-sub")
	sub.subscribe(t, paho.SubscribeOptions{Topic: "log/#", QoS: 1})
	pub := connect(t, broker.Addr(), "log-pub")
	pub.publish(t, &paho.Publish{Topic: "log/x", QoS: 1, Payload: []byte("secret-payload"),
		Properties: &paho.PublishProperties{ResponseTopic: "log/reply", User: paho.UserProperties{{Key: "k", Value: "v"}}}})
	sub.receive(t)
	waitFor(t, "the delivery to be logged", func() bool {
		return strings.Contains(out.String(), `msg="packet sent" client=log-sub type=Publish topic=log/x qos=1`)
	})
	log := out.String()
	for _, want := range []string{
		`msg="packet received" client="" type=Connect client_id=log-pub`,
		`msg="packet received" client=log-sub type=Subscribe filter=log/#`,
		`msg="packet received" client=log-pub type=Publish topic=log/x qos=1 retain=false dup=false bytes=14 id=1 response_topic=log/reply user.k=v`,
		`msg="packet sent" client=log-pub type=Puback id=1 reason=0`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("no %q in the log:\n%s", want, log)
		}
	}
	if strings.Contains(log, "secret-payload") {
		t.Error("a payload was logged")
	}
}
