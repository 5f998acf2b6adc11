package rpc_test

import (
	"context"
	"encoding/binary"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/internal/mosquittotest"
	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// Round trips, one call at a time, to compare allocations per call: raw
// paho echo (the bound), an mqttrpc client calling a raw responder that
// answers with mqttrpc's properties (the client's share), and mqttrpc on
// both ends. On the embedded broker (testbroker) the broker's own
// allocations are in every row and cancel out in the differences, except
// what it spends on properties; on Mosquitto (a separate process, when
// installed) the rows count the client and the server alone:
//
//	go test ./rpc -run '^$' -bench RoundTrip -benchmem

const benchRequestTopic = "mqttrpc/" + echoServiceName + "/bench-dev/Echo"

func BenchmarkRoundTrip(b *testing.B) {
	b.Run("testbroker", func(b *testing.B) { benchRoundTrip(b, testbroker.Start(b).URL()) })
	b.Run("mosquitto", func(b *testing.B) { benchRoundTrip(b, mosquittotest.Start(b).URL()) })
}

func benchRoundTrip(b *testing.B, brokerURL string) {
	req := wrapperspb.String("0123456789012345678901234567890123456789012345678901234567890")

	for _, props := range []bool{false, true} {
		name := "raw-paho"
		if props {
			// The properties of the mqttrpc protocol on raw paho: what
			// paho and the broker spend on them, without mqttrpc.
			name = "raw-paho-with-mqttrpc-properties"
		}
		b.Run(name, func(b *testing.B) {
			startRawResponder(b, brokerURL, props)
			r := newRawRequester(b, brokerURL)
			r.protocolProps = props
			payload := make([]byte, 64)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := r.call(ctx, payload); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("mqttrpc-client-raw-server", func(b *testing.B) {
		startRawResponder(b, brokerURL, true)
		c := rpc.NewClient(dialBench(b, brokerURL))
		b.Cleanup(func() { _ = c.Close(context.Background()) })
		benchCalls(b, c, req)
	})
	b.Run("mqttrpc", func(b *testing.B) {
		for _, coalesce := range []bool{false, true} {
			name := "coalescing-off"
			if coalesce {
				name = "coalescing-on"
			}
			b.Run(name, func(b *testing.B) {
				conn := dialBench(b, brokerURL, rpc.WithWriteCoalescing(coalesce))
				srv := rpc.NewServer(conn, rpc.WithServerID("bench-dev"))
				srv.RegisterService(&echoDesc, &echoService{})
				if err := srv.Start(context.Background()); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
				c := rpc.NewClient(dialBench(b, brokerURL, rpc.WithWriteCoalescing(coalesce)))
				b.Cleanup(func() { _ = c.Close(context.Background()) })
				benchCalls(b, c, req)
			})
		}
	})
}

func benchCalls(b *testing.B, c *rpc.Client, req *wrapperspb.StringValue) {
	ctx := context.Background()
	out := new(wrapperspb.StringValue)
	if err := c.Call(ctx, echoServiceName, "Echo", req, out, rpc.To("bench-dev")); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := c.Call(ctx, echoServiceName, "Echo", req, out, rpc.To("bench-dev")); err != nil {
			b.Fatal(err)
		}
	}
}

func dialBench(b *testing.B, url string, opts ...rpc.ConnOption) *rpc.Conn {
	b.Helper()
	conn, err := rpc.Dial(context.Background(), url, append([]rpc.ConnOption{rpc.WithClientID(uniqueID("bench"))}, opts...)...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func connectRaw(b *testing.B, brokerURL string, onPublish func(paho.PublishReceived) (bool, error)) *autopaho.ConnectionManager {
	b.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		b.Fatal(err)
	}
	cm, err := autopaho.NewConnection(context.Background(), autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		ConnectTimeout:                5 * time.Second,
		ClientConfig: paho.ClientConfig{
			ClientID:          uniqueID("raw"),
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){onPublish},
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cm.Disconnect(context.Background()) })
	if err := cm.AwaitConnection(context.Background()); err != nil {
		b.Fatal(err)
	}
	return cm
}

// startRawResponder answers requests on benchRequestTopic with their
// payload, as a raw paho program would; withExpiry adds what an mqttrpc
// server sends along to an OK answer of a unicast protobuf call: the expiry.
func startRawResponder(b *testing.B, brokerURL string, withExpiry bool) {
	var cm *autopaho.ConnectionManager
	var wg sync.WaitGroup
	b.Cleanup(wg.Wait)
	cm = connectRaw(b, brokerURL, func(pr paho.PublishReceived) (bool, error) {
		p := pr.Packet
		if p.Properties == nil || p.Properties.ResponseTopic == "" {
			return true, nil
		}
		props := &paho.PublishProperties{CorrelationData: p.Properties.CorrelationData}
		if withExpiry {
			expiry := uint32(10)
			props.MessageExpiry = &expiry
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = cm.Publish(context.Background(), &paho.Publish{QoS: 1, Topic: p.Properties.ResponseTopic, Properties: props, Payload: p.Payload})
		}()
		return true, nil
	})
	if _, err := cm.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: benchRequestTopic, QoS: 1}}}); err != nil {
		b.Fatal(err)
	}
}

type rawRequester struct {
	cm            *autopaho.ConnectionManager
	protocolProps bool // send the properties an mqttrpc client sends
	responseTopic string
	seq           uint64
	mu            sync.Mutex
	pending       map[[16]byte]chan *paho.Publish
}

func newRawRequester(b *testing.B, brokerURL string) *rawRequester {
	r := &rawRequester{responseTopic: "bench/responses/" + uniqueID("raw"), pending: map[[16]byte]chan *paho.Publish{}}
	r.cm = connectRaw(b, brokerURL, func(pr paho.PublishReceived) (bool, error) {
		var id [16]byte
		copy(id[:], pr.Packet.Properties.CorrelationData)
		r.mu.Lock()
		ch := r.pending[id]
		delete(r.pending, id)
		r.mu.Unlock()
		if ch != nil {
			ch <- pr.Packet
		}
		return true, nil
	})
	if _, err := r.cm.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: r.responseTopic, QoS: 1}}}); err != nil {
		b.Fatal(err)
	}
	return r
}

func (r *rawRequester) call(ctx context.Context, payload []byte) error {
	var id [16]byte
	r.seq++
	binary.BigEndian.PutUint64(id[8:], r.seq)
	ch := make(chan *paho.Publish, 1)
	r.mu.Lock()
	r.pending[id] = ch
	r.mu.Unlock()
	props := &paho.PublishProperties{ResponseTopic: r.responseTopic, CorrelationData: id[:]}
	if r.protocolProps {
		expiry := uint32(10)
		props.MessageExpiry = &expiry
		props.User = paho.UserProperties{{Key: "mqttrpc-timeout", Value: "9999"}}
	}
	if _, err := r.cm.Publish(ctx, &paho.Publish{QoS: 1, Topic: benchRequestTopic, Properties: props, Payload: payload}); err != nil {
		return err
	}
	<-ch
	return nil
}
