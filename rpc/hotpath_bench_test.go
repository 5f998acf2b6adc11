package rpc

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/codec"
)

// Micro-benchmarks of the hot path, without a broker:
//
//	go test ./rpc -run '^$' -bench 'Encode|Dispatch|Dedup|Topic' -benchmem

var benchValue = wrapperspb.String("0123456789012345678901234567890123456789012345678901234567890")

// BenchmarkClientEncodeRequest runs a call up to the publish: options,
// topic, properties, payload, correlation ID, pending entry. The
// connection is down, so the call stops where it would publish.
func BenchmarkClientEncodeRequest(b *testing.B) {
	conn := &Conn{logger: discardLogger()}
	conn.listeners.Store(&[]*listener{})
	c := NewClient(conn)
	stub := c.Stub(&fuzzDesc, "Echo", To("dev-1"))
	out := new(wrapperspb.StringValue)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := stub.Invoke(ctx, benchValue, out); CodeOf(err) != Unavailable {
			b.Fatal(err)
		}
	}
}

// BenchmarkServerDispatch runs one request through the server: claim,
// admission, dedup, goroutine, decode, handler, response encoding, up to
// the publish.
func BenchmarkServerDispatch(b *testing.B) {
	s := NewServer(&Conn{logger: discardLogger()}, WithServerID("dev-1"))
	s.RegisterService(&fuzzDesc, fuzzEchoImpl{})
	s.started = true
	done := make(chan struct{}, 1)
	s.publish = func(context.Context, *paho.Publish) error {
		done <- struct{}{}
		return nil
	}
	payload, err := proto.Marshal(benchValue)
	if err != nil {
		b.Fatal(err)
	}
	expiry := uint32(10)
	corr := make([]byte, 16)
	p := &paho.Publish{
		QoS:   1,
		Topic: "mqttrpc/fuzz.v1.Echo/dev-1/Echo",
		Properties: &paho.PublishProperties{
			ResponseTopic:   DefaultResponsePrefix + "caller-1",
			CorrelationData: corr,
			ContentType:     codec.ContentTypeProto,
			MessageExpiry:   &expiry,
			User:            paho.UserProperties{{Key: propTimeout, Value: "10000"}},
		},
		Payload: payload,
	}
	var seq uint64
	b.ReportAllocs()
	for b.Loop() {
		seq++
		binary.BigEndian.PutUint64(corr[8:], seq) // a new call each time
		if !s.handlePublish(p, noAck) {
			b.Fatal("not claimed")
		}
		<-done
	}
	b.StopTimer()
	s.workers.Wait()
}

// BenchmarkDedup: a new request (begin, then finish with its answer), and
// the lookup of a duplicate.
func BenchmarkDedup(b *testing.B) {
	resp := &cachedResponse{qos: 1, topic: DefaultResponsePrefix + "caller-1", payload: make([]byte, 64),
		properties: responseProperties{correlationData: make([]byte, 16), user: []userProperty{{propStatus, "0"}}}}
	corr := make([]byte, 16)
	now := time.Now()
	deadline := now.Add(10 * time.Second)
	b.Run("new", func(b *testing.B) {
		c := newDedupCache(10000, 16<<20)
		var seq uint64
		b.ReportAllocs()
		for b.Loop() {
			seq++
			binary.BigEndian.PutUint64(corr[8:], seq)
			key := dedupKey(resp.topic, corr)
			if st, _ := c.begin(key, deadline, now); st != dedupNew {
				b.Fatal(st)
			}
			c.finish(key, resp)
		}
	})
	b.Run("duplicate", func(b *testing.B) {
		c := newDedupCache(10000, 16<<20)
		key := dedupKey(resp.topic, corr)
		c.begin(key, deadline, now)
		c.finish(key, resp)
		b.ReportAllocs()
		for b.Loop() {
			if st, _ := c.begin(dedupKey(resp.topic, corr), deadline, now); st != dedupDone {
				b.Fatal(st)
			}
		}
	})
}

func BenchmarkTopic(b *testing.B) {
	custom := must(ParseTopicTemplate("plant/{site}/{target}/hvac/{method}"))
	b.Run("render-default", func(b *testing.B) {
		v := topicValues{service: "example.thermostat.v1.Thermostat", target: "dev-42", method: "SetTarget"}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := defaultTemplate.render(&v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("render-custom", func(b *testing.B) {
		v := topicValues{service: "s", target: "dev-42", method: "SetTarget", custom: map[string]string{"site": "north"}}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := custom.render(&v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("match-default", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var v topicValues
			if !defaultTemplate.match("mqttrpc/example.thermostat.v1.Thermostat/dev-42/SetTarget", "example.thermostat.v1.Thermostat", &v) {
				b.Fatal("no match")
			}
		}
	})
	b.Run("match-custom", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var v topicValues
			if !custom.match("plant/north/dev-42/hvac/SetTarget", "s", &v) {
				b.Fatal("no match")
			}
		}
	})
	b.Run("response-policy", func(b *testing.B) {
		allow := ResponseTopicFilter(DefaultResponsePrefix + "+")
		b.ReportAllocs()
		for b.Loop() {
			if !allow(DefaultResponsePrefix + "caller-1") {
				b.Fatal("refused")
			}
		}
	})
}
