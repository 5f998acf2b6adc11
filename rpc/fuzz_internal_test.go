package rpc

import (
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

type fuzzEcho interface {
	Echo(context.Context, *wrapperspb.StringValue) (*wrapperspb.StringValue, error)
}

type fuzzEchoImpl struct{}

func (fuzzEchoImpl) Echo(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	if in.GetValue() == "panic" {
		panic("handler panic")
	}
	return in, nil
}

var fuzzDesc = ServiceDesc{
	ServiceName: "fuzz.v1.Echo",
	HandlerType: (*fuzzEcho)(nil),
	Methods: []MethodDesc{{
		MethodName: "Echo",
		QoS:        QoS1,
		NewRequest: func() any { return new(wrapperspb.StringValue) },
		Handler: func(srv any, ctx context.Context, req any) (any, error) {
			return srv.(fuzzEcho).Echo(ctx, req.(*wrapperspb.StringValue))
		},
	}},
}

// newOfflineServer returns a started server whose answers are recorded
// instead of published, to run the request path without a broker.
func newOfflineServer(t testing.TB) (*Server, func() []*paho.Publish) {
	s := NewServer(&Conn{logger: discardLogger()}, WithServerID("dev-1"), WithConcurrency(4), WithQueueSize(4), WithMaxPayload(1<<16))
	s.RegisterService(&fuzzDesc, fuzzEchoImpl{})
	s.started = true
	var mu sync.Mutex
	var sent []*paho.Publish
	s.publish = func(ctx context.Context, p *paho.Publish) error {
		mu.Lock()
		sent = append(sent, p)
		mu.Unlock()
		return nil
	}
	return s, func() []*paho.Publish {
		s.workers.Wait()
		s.early.wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return sent
	}
}

// FuzzServeRequest feeds arbitrary PUBLISH packets to the server's request
// path: it must never panic, and every answer must go to an allowed response
// topic with the request's correlation data and a valid status.
func FuzzServeRequest(f *testing.F) {
	f.Add("mqttrpc/fuzz.v1.Echo/dev-1/Echo", "mqttrpc/responses/c1", []byte("corr"), "application/json", "5000", uint32(10), []byte(`"hello"`), byte(1))
	f.Add("mqttrpc/fuzz.v1.Echo/dev-1/Echo", "mqttrpc/responses/c1", []byte("c"), "", "", uint32(0), []byte{0x0a, 0x02, 'h', 'i'}, byte(0))
	f.Add("mqttrpc/fuzz.v1.Echo/_all/Nope", "mqttrpc/responses/c1", []byte{}, "text/plain", "-1", uint32(1), []byte("x"), byte(2))
	f.Add("mqttrpc/fuzz.v1.Echo/dev-1/Echo", "evil/topic", []byte("c"), "application/json", "0", uint32(5), []byte("\"\xff\""), byte(1))
	f.Add("mqttrpc/fuzz.v1.Echo/dev-1/Echo", "mqttrpc/responses/c1", []byte("p"), "application/json", "99999999999999999999", uint32(4294967295), []byte(`"panic"`), byte(1))
	f.Fuzz(func(t *testing.T, topic, responseTopic string, corr []byte, contentType, timeout string, expiry uint32, payload []byte, qos byte) {
		s, sent := newOfflineServer(t)
		props := &paho.PublishProperties{ResponseTopic: responseTopic, CorrelationData: corr, ContentType: contentType}
		if expiry > 0 {
			props.MessageExpiry = &expiry
		}
		if timeout != "" {
			props.User = paho.UserProperties{{Key: propTimeout, Value: timeout}}
		}
		s.handlePublish(&paho.Publish{Topic: topic, QoS: qos % 3, Properties: props, Payload: payload}, noAck)
		s.handlePublish(&paho.Publish{Topic: topic, QoS: qos % 3, Properties: props, Payload: payload}, noAck) // a duplicate
		for _, p := range sent() {
			if !s.cfg.responseTopicPolicy(p.Topic) || p.Topic != responseTopic {
				t.Fatalf("answer published on %q for response topic %q", p.Topic, responseTopic)
			}
			if string(p.Properties.CorrelationData) != string(corr) {
				t.Fatalf("correlation data %q, want %q", p.Properties.CorrelationData, corr)
			}
			status, withStatus, withMessage := "", false, false
			for _, u := range p.Properties.User {
				switch u.Key {
				case propStatus:
					status, withStatus = u.Value, true
				case propMessage:
					withMessage = true
				}
			}
			// Absent means OK; when present it is an error's code.
			if code, err := strconv.ParseUint(status, 10, 32); withStatus && (err != nil || code == 0 || Code(code) > maxCode) {
				t.Fatalf("status %q", status)
			}
			if withStatus != withMessage {
				t.Fatalf("status %q with a message: %v; an error has both, an OK answer neither", status, withMessage)
			}
			if p.Properties.MessageExpiry == nil || *p.Properties.MessageExpiry == 0 {
				t.Fatalf("answer without expiry")
			}
		}
	})
}

// FuzzTopicTemplate checks that every template ParseTopicTemplate accepts
// renders topics that match it back to the same values, and filters that
// match those topics.
func FuzzTopicTemplate(f *testing.F) {
	f.Add(DefaultTopicTemplate, "svc.v1.S", "dev-1", "Do", "north")
	f.Add("plant/{site}/{target}/hvac/{method}", "s", "t", "m", "site-1")
	f.Add("{target}/{method}", "s", "_any", "m", "")
	f.Add("a/{x}/{y}/{target}/{method}/{service}", "s.S", "x", "M", "v")
	f.Fuzz(func(t *testing.T, template, service, target, method, custom string) {
		tmpl, err := ParseTopicTemplate(template)
		if err != nil {
			return
		}
		values := topicValues{service: service, target: target, method: method, custom: map[string]string{}}
		for _, name := range tmpl.custom {
			values.custom[name] = custom
		}
		topic, err := tmpl.render(&values)
		if err != nil {
			if CodeOf(err) != InvalidArgument {
				t.Fatalf("render error with code %v", CodeOf(err))
			}
			return
		}
		var got topicValues
		if !tmpl.match(topic, service, &got) {
			t.Fatalf("template %q does not match its own topic %q", template, topic)
		}
		if got.target != target || got.method != method {
			t.Fatalf("match(%q) = %+v", topic, got)
		}
		for _, name := range tmpl.custom {
			if got.custom[name] != custom {
				t.Fatalf("custom token %s = %q, want %q", name, got.custom[name], custom)
			}
		}
		filter := tmpl.filter(&topicValues{service: service})
		if !topicMatchesFilter(filter, topic) {
			t.Fatalf("filter %q does not match topic %q", filter, topic)
		}
	})
}
