package main

import (
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// span is what the test reads of a span printed by the stdout exporter.
type span struct {
	Name        string
	SpanContext struct{ TraceID, SpanID string }
	Parent      struct {
		SpanID string
		Remote bool
	}
	SpanKind   int // 1 internal, 2 server, 3 client
	Status     struct{ Code string }
	Attributes []struct {
		Key   string
		Value struct{ Value any }
	}
	Resource []struct {
		Key   string
		Value struct{ Value any }
	}
}

const (
	kindInternal = 1
	kindServer   = 2
	kindClient   = 3
)

func (s *span) attr(key string) any {
	for _, kv := range s.Attributes {
		if kv.Key == key {
			return kv.Value.Value
		}
	}
	return nil
}

func (s *span) serviceName() any {
	for _, kv := range s.Resource {
		if kv.Key == "service.name" {
			return kv.Value.Value
		}
	}
	return nil
}

func TestSpansShareOneTrace(t *testing.T) {
	defer goleak.VerifyNone(t)
	var out strings.Builder
	if err := run("", &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	var spans []span
	dec := json.NewDecoder(strings.NewReader(out.String()))
	for {
		var s span
		if err := dec.Decode(&s); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("output is not a sequence of JSON spans: %v\n%s", err, out.String())
		}
		spans = append(spans, s)
	}

	byID := map[string]*span{}
	var operation *span
	var clients, servers []*span
	for i := range spans {
		s := &spans[i]
		byID[s.SpanContext.SpanID] = s
		switch s.SpanKind {
		case kindInternal:
			operation = s
		case kindClient:
			clients = append(clients, s)
		case kindServer:
			servers = append(servers, s)
		}
	}
	if operation == nil || len(clients) != 3 || len(servers) != 3 {
		t.Fatalf("got %d spans: operation %v, %d CLIENT, %d SERVER; want the operation and 3 calls on each side", len(spans), operation != nil, len(clients), len(servers))
	}
	traceID := operation.SpanContext.TraceID
	for _, c := range clients {
		if c.SpanContext.TraceID != traceID || c.Parent.SpanID != operation.SpanContext.SpanID {
			t.Errorf("CLIENT span %s: trace %s parent %s, want trace %s under the operation", c.Name, c.SpanContext.TraceID, c.Parent.SpanID, traceID)
		}
		if c.serviceName() != "thermostat-caller" {
			t.Errorf("CLIENT span %s from %v, want thermostat-caller", c.Name, c.serviceName())
		}
	}
	for _, s := range servers {
		parent := byID[s.Parent.SpanID]
		switch {
		case s.SpanContext.TraceID != traceID:
			t.Errorf("SERVER span %s in trace %s, want the caller's %s", s.Name, s.SpanContext.TraceID, traceID)
		case parent == nil || parent.SpanKind != kindClient || !s.Parent.Remote:
			t.Errorf("SERVER span %s: parent %s (remote %t) is not a CLIENT span", s.Name, s.Parent.SpanID, s.Parent.Remote)
		case parent.Name != s.Name || parent.attr("messaging.destination.name") != s.attr("messaging.destination.name"):
			t.Errorf("SERVER span %s is under the CLIENT span of another call, %s", s.Name, parent.Name)
		}
		if s.serviceName() != "thermostat-device" {
			t.Errorf("SERVER span %s from %v, want thermostat-device", s.Name, s.serviceName())
		}
	}
	// The refused SetTarget: an error for the caller only.
	var failedClients, failedServers int
	for _, c := range clients {
		if c.Status.Code == "Error" && c.attr("rpc.response.status_code") == "INVALID_ARGUMENT" {
			failedClients++
		}
	}
	for _, s := range servers {
		if s.Status.Code == "Error" {
			failedServers++
		}
	}
	if failedClients != 1 || failedServers != 0 {
		t.Errorf("%d CLIENT spans failed with INVALID_ARGUMENT and %d SERVER spans failed; want 1 and 0", failedClients, failedServers)
	}
}
