package rpc_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

func userProps(p *paho.Publish) map[string]string {
	m := map[string]string{}
	for _, u := range p.Properties.User {
		m[u.Key] = u.Value
	}
	return m
}

func u32(v uint32) *uint32 { return &v }

// hasUserProperty reports whether p carries the user property key.
func hasUserProperty(p *paho.Publish, key string) bool {
	for _, u := range p.Properties.User {
		if u.Key == key {
			return true
		}
	}
	return false
}

// TestWireFormatFromOutside calls a server with JSON from a raw MQTT client
// that follows docs/protocol.md alone, and checks every property of the
// answers.
func TestWireFormatFromOutside(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		srv := startServer(t, b.url, &echoService{}, rpc.WithServerID("dev-1"))
		raw := newRawClient(t, b.url, "raw-1")
		const responseTopic = "mqttrpc/responses/raw-1"
		raw.SubscribeTo(t, responseTopic)
		raw.SubscribeTo(t, "evil/#")
		topic := "mqttrpc/" + echoServiceName + "/dev-1/Echo"
		publishTo := func(topic string, props *paho.PublishProperties, payload string) {
			t.Helper()
			if _, err := raw.Publish(testCtx(t), &paho.Publish{Topic: topic, QoS: 1, Properties: props, Payload: []byte(payload)}); err != nil {
				t.Fatal(err)
			}
		}
		publish := func(props *paho.PublishProperties, payload string) {
			t.Helper()
			publishTo(topic, props, payload)
		}

		t.Run("ok", func(t *testing.T) {
			publish(&paho.PublishProperties{
				ResponseTopic:   responseTopic,
				CorrelationData: []byte("corr-1"),
				ContentType:     "application/json",
				MessageExpiry:   u32(10),
				User:            paho.UserProperties{{Key: "mqttrpc-version", Value: "1"}, {Key: "mqttrpc-timeout", Value: "5000"}},
			}, `"hello"`)
			p := raw.Next(10 * time.Second)
			if p == nil {
				t.Fatal("no response")
			}
			up := userProps(p)
			switch {
			case p.Topic != responseTopic:
				t.Errorf("topic %q", p.Topic)
			case p.QoS != 1:
				t.Errorf("QoS %d, want the request's 1", p.QoS)
			case string(p.Properties.CorrelationData) != "corr-1":
				t.Errorf("correlation data %q", p.Properties.CorrelationData)
			case p.Properties.ContentType != "application/json":
				t.Errorf("content type %q", p.Properties.ContentType)
			case p.Properties.PayloadFormat == nil || *p.Properties.PayloadFormat != 1:
				t.Errorf("payload format indicator %v, want 1 for JSON", p.Properties.PayloadFormat)
			case p.Properties.MessageExpiry == nil || *p.Properties.MessageExpiry < 1 || *p.Properties.MessageExpiry > 5:
				t.Errorf("message expiry %v, want 1..5 (what is left of the 5s timeout)", p.Properties.MessageExpiry)
			case hasUserProperty(p, "mqttrpc-status"):
				t.Errorf("status %q on an OK answer; absent means 0", up["mqttrpc-status"])
			case hasUserProperty(p, "mqttrpc-target"):
				t.Errorf("target %q on a unicast answer; the caller named it", up["mqttrpc-target"])
			case up["mqttrpc-message"] != "":
				t.Errorf("message %q on success", up["mqttrpc-message"])
			case string(p.Payload) != `"hello"`:
				t.Errorf("payload %q", p.Payload)
			}
		})

		// Protobuf, the default: no ContentType, no mqttrpc-version, and
		// the answer has no ContentType either. A broadcast answer names
		// the server that gave it.
		t.Run("protobuf broadcast", func(t *testing.T) {
			req, err := proto.Marshal(wrapperspb.String("hi"))
			if err != nil {
				t.Fatal(err)
			}
			publishTo("mqttrpc/"+echoServiceName+"/_all/Echo", &paho.PublishProperties{
				ResponseTopic:   responseTopic,
				CorrelationData: []byte("corr-pb"),
				MessageExpiry:   u32(10),
			}, string(req))
			p := raw.Next(10 * time.Second)
			if p == nil {
				t.Fatal("no response")
			}
			up := userProps(p)
			var got wrapperspb.StringValue
			switch {
			case string(p.Properties.CorrelationData) != "corr-pb":
				t.Errorf("correlation data %q", p.Properties.CorrelationData)
			case p.Properties.ContentType != "":
				t.Errorf("content type %q; absent means protobuf", p.Properties.ContentType)
			case p.Properties.PayloadFormat != nil:
				t.Errorf("payload format indicator %v on protobuf", *p.Properties.PayloadFormat)
			case hasUserProperty(p, "mqttrpc-status"):
				t.Errorf("status %q on an OK answer; absent means 0", up["mqttrpc-status"])
			case up["mqttrpc-target"] != "dev-1":
				t.Errorf("target %q on a broadcast answer, want dev-1", up["mqttrpc-target"])
			case proto.Unmarshal(p.Payload, &got) != nil || got.GetValue() != "hi":
				t.Errorf("payload %x", p.Payload)
			}
		})

		// An explicit application/protobuf is the default spelled out; a
		// later protocol version is refused with Unimplemented.
		t.Run("explicit defaults and other versions", func(t *testing.T) {
			req, err := proto.Marshal(wrapperspb.String("pb"))
			if err != nil {
				t.Fatal(err)
			}
			for i, tc := range []struct {
				version string
				status  rpc.Code
			}{{"1", rpc.OK}, {"2", rpc.Unimplemented}} {
				corr := "version-" + strconv.Itoa(i)
				publish(&paho.PublishProperties{
					ResponseTopic:   responseTopic,
					CorrelationData: []byte(corr),
					ContentType:     "application/protobuf",
					MessageExpiry:   u32(10),
					User:            paho.UserProperties{{Key: "mqttrpc-version", Value: tc.version}},
				}, string(req))
				p := raw.Next(10 * time.Second)
				if p == nil {
					t.Fatalf("version %s: no response", tc.version)
				}
				up := userProps(p)
				wantStatus := strconv.Itoa(int(tc.status))
				if tc.status == rpc.OK {
					wantStatus = "" // absent on an OK answer
				}
				var got wrapperspb.StringValue
				switch {
				case string(p.Properties.CorrelationData) != corr:
					t.Errorf("version %s: correlation data %q", tc.version, p.Properties.CorrelationData)
				case up["mqttrpc-status"] != wantStatus:
					t.Errorf("version %s: status %q, want %q (message %q)", tc.version, up["mqttrpc-status"], wantStatus, up["mqttrpc-message"])
				case tc.status == rpc.OK && (proto.Unmarshal(p.Payload, &got) != nil || got.GetValue() != "pb"):
					t.Errorf("version %s: payload %x", tc.version, p.Payload)
				case tc.status != rpc.OK && !strings.Contains(up["mqttrpc-message"], "version"):
					t.Errorf("version %s: message %q does not name the version", tc.version, up["mqttrpc-message"])
				}
			}
		})

		errorCases := []struct {
			name        string
			contentType string
			payload     string
			status      rpc.Code
		}{
			{"undecodable JSON", "application/json", `{"value":`, rpc.InvalidArgument},
			{"invalid UTF-8", "application/json", "\"\xff\xfe\"", rpc.InvalidArgument},
			{"garbage protobuf", "", "\xff\xff\xff\xff", rpc.InvalidArgument},
			{"unknown content type", "text/plain", "hello", rpc.InvalidArgument},
		}
		for i, tc := range errorCases {
			t.Run(tc.name, func(t *testing.T) {
				corr := "err-" + strconv.Itoa(i)
				publish(&paho.PublishProperties{ResponseTopic: responseTopic, CorrelationData: []byte(corr), ContentType: tc.contentType, MessageExpiry: u32(10)}, tc.payload)
				p := raw.Next(10 * time.Second)
				if p == nil {
					t.Fatal("no response")
				}
				up := userProps(p)
				if up["mqttrpc-status"] != strconv.Itoa(int(tc.status)) || up["mqttrpc-message"] == "" || len(p.Payload) != 0 || string(p.Properties.CorrelationData) != corr {
					t.Errorf("status %q message %q payload %q corr %q; want status %d with a message, no payload", up["mqttrpc-status"], up["mqttrpc-message"], p.Payload, p.Properties.CorrelationData, tc.status)
				}
			})
		}

		t.Run("dropped without answer", func(t *testing.T) {
			publish(&paho.PublishProperties{ResponseTopic: responseTopic, CorrelationData: []byte("expired"), User: paho.UserProperties{{Key: "mqttrpc-timeout", Value: "0"}}}, "")
			publish(&paho.PublishProperties{ResponseTopic: "evil/topic", CorrelationData: []byte("evil")}, "")
			publish(&paho.PublishProperties{CorrelationData: []byte("no response topic")}, "")
			publish(&paho.PublishProperties{ResponseTopic: responseTopic, CorrelationData: make([]byte, 300)}, "")
			// A normal request after them is still answered, and is the next message.
			publish(&paho.PublishProperties{ResponseTopic: responseTopic, CorrelationData: []byte("after"), ContentType: "application/json"}, `"x"`)
			p := raw.Next(10 * time.Second)
			if p == nil || string(p.Properties.CorrelationData) != "after" {
				t.Fatalf("got %v, want only the answer to the last request", p)
			}
			st := srv.Stats()
			for _, r := range []rpc.DropReason{rpc.DropExpired, rpc.DropResponseTopicPolicy, rpc.DropNoResponseTopic, rpc.DropBadCorrelationData} {
				if st.Dropped[r] != 1 {
					t.Errorf("dropped[%v] = %d, want 1 (%v)", r, st.Dropped[r], st.Dropped)
				}
			}
			if p := raw.Next(200 * time.Millisecond); p != nil {
				t.Errorf("unexpected message on %q", p.Topic)
			}
		})
	})
}

// TestAnswersFromOutside has a raw MQTT client answer an mqttrpc client's
// calls the way docs/protocol.md allows: an answer without mqttrpc-status
// is OK, as is an explicit 0; any other code is that error, and a status
// that is not a number is Internal.
func TestAnswersFromOutside(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		responder := newRawClient(t, b.url, uniqueID("responder"))
		responder.SubscribeTo(t, "mqttrpc/"+echoServiceName+"/dev-raw/+")
		client := newClient(t, b.url)

		cases := []struct {
			name    string
			user    paho.UserProperties
			code    rpc.Code
			message string
		}{
			{name: "no status", code: rpc.OK},
			{name: "status 0", user: paho.UserProperties{{Key: "mqttrpc-status", Value: "0"}}, code: rpc.OK},
			{name: "status 5", user: paho.UserProperties{{Key: "mqttrpc-status", Value: "5"}, {Key: "mqttrpc-message", Value: "no such sensor"}}, code: rpc.NotFound, message: "no such sensor"},
			{name: "malformed status", user: paho.UserProperties{{Key: "mqttrpc-status", Value: "ok"}}, code: rpc.Internal, message: "malformed"},
			{name: "version 1", user: paho.UserProperties{{Key: "mqttrpc-version", Value: "1"}}, code: rpc.OK},
			{name: "version 2", user: paho.UserProperties{{Key: "mqttrpc-version", Value: "2"}}, code: rpc.Internal, message: "version \"2\""},
			{name: "encoded message", user: paho.UserProperties{{Key: "mqttrpc-status", Value: "9"}, {Key: "mqttrpc-message", Value: "line%0Abreak 100%25 ☺"}}, code: rpc.FailedPrecondition, message: "line\nbreak 100% ☺"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				type result struct {
					value string
					err   error
				}
				done := make(chan result, 1)
				go func() {
					v, err := echo(testCtx(t), client, "ping", rpc.To("dev-raw"))
					done <- result{v, err}
				}()
				req := responder.Next(10 * time.Second)
				if req == nil {
					t.Fatal("the responder got no request")
				}
				var payload []byte
				if tc.code == rpc.OK {
					var err error
					if payload, err = proto.Marshal(wrapperspb.String("pong")); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := responder.Publish(testCtx(t), &paho.Publish{
					Topic: req.Properties.ResponseTopic, QoS: 1, Payload: payload,
					Properties: &paho.PublishProperties{CorrelationData: req.Properties.CorrelationData, User: tc.user},
				}); err != nil {
					t.Fatal(err)
				}
				var r result
				select {
				case r = <-done:
				case <-time.After(15 * time.Second):
					t.Fatal("the call did not return")
				}
				if tc.code == rpc.OK {
					if r.err != nil || r.value != "pong" {
						t.Fatalf("got %q, %v; want pong", r.value, r.err)
					}
					return
				}
				if e := wantCode(t, r.err, tc.code); !strings.Contains(e.Message(), tc.message) {
					t.Errorf("message %q, want it to contain %q", e.Message(), tc.message)
				}
			})
		}
	})
}
