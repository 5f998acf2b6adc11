package otelrpc_test

import (
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/internal/rpctest"
)

// rawClient is a bare MQTT client that knows nothing of mqttrpc or
// OpenTelemetry: it stands for any MQTT client that calls a server.
type rawClient = rpctest.RawClient

func newRawClient(t *testing.T, brokerURL, clientID string) *rawClient {
	t.Helper()
	return rpctest.NewRawClient(t, brokerURL, clientID)
}

func userProperty(p *paho.Publish, key string) string {
	return p.Properties.User.Get(key)
}
