package rpc_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// lockedBuffer is a bytes.Buffer safe for the server's goroutines.
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

// TestDropsAreLogged checks that a server logs each dropped or rejected
// request with its reason and topic, and never its payload.
func TestDropsAreLogged(t *testing.T) {
	b := newTestbroker(t)
	var out lockedBuffer
	logger := slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := startServer(t, b.url, &echoService{}, rpc.WithServerID("dev-1"), rpc.WithLogger(logger))
	raw := newRawClient(t, b.url, "raw-log")
	topic := "mqttrpc/" + echoServiceName + "/dev-1/Echo"
	const secret = "do-not-log-this-payload"
	for _, props := range []*paho.PublishProperties{
		{ResponseTopic: "evil/topic", CorrelationData: []byte("a")},
		{CorrelationData: []byte("b")},
		{ResponseTopic: "mqttrpc/responses/raw-log", CorrelationData: []byte("c"), User: paho.UserProperties{{Key: "mqttrpc-timeout", Value: "0"}}},
	} {
		if _, err := raw.Publish(testCtx(t), &paho.Publish{Topic: topic, QoS: 1, Properties: props, Payload: []byte(secret)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool {
		st := srv.Stats()
		return st.Dropped[rpc.DropResponseTopicPolicy] == 1 && st.Dropped[rpc.DropNoResponseTopic] == 1 && st.Dropped[rpc.DropExpired] == 1
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		logged := out.String()
		missing := ""
		for _, reason := range []rpc.DropReason{rpc.DropResponseTopicPolicy, rpc.DropNoResponseTopic, rpc.DropExpired} {
			if !strings.Contains(logged, `"reason":"`+reason.String()+`"`) {
				missing = reason.String()
			}
		}
		if missing == "" {
			if strings.Count(logged, `"topic":"`+topic+`"`) < 3 {
				t.Errorf("log does not name the request topic of every drop:\n%s", logged)
			}
			if strings.Contains(logged, secret) {
				t.Errorf("log contains the payload:\n%s", logged)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with reason %s:\n%s", missing, logged)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
