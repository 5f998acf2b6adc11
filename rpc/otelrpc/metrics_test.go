package otelrpc_test

import (
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/rpc/otelrpc"
)

// findMetric returns the metric called name, failing if there is none.
func findMetric(t *testing.T, rm metricdata.ResourceMetrics, name string) metricdata.Metrics {
	t.Helper()
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				if sm.Scope.Name != "github.com/mqttrpc/mqttrpc/rpc/otelrpc" {
					t.Errorf("metric %s in scope %q", name, sm.Scope.Name)
				}
				return m
			}
		}
	}
	t.Fatalf("no metric %s", name)
	return metricdata.Metrics{}
}

func attrValue(set attribute.Set, key attribute.Key) string {
	v, _ := set.Value(key)
	return v.String()
}

// durationCounts returns a histogram's counts by rpc.response.status_code.
func durationCounts(t *testing.T, m metricdata.Metrics) map[string]uint64 {
	t.Helper()
	if m.Unit != "s" {
		t.Errorf("%s unit %q, want s", m.Name, m.Unit)
	}
	h, ok := m.Data.(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("%s is a %T, want a float64 histogram", m.Name, m.Data)
	}
	counts := map[string]uint64{}
	for _, dp := range h.DataPoints {
		if attrValue(dp.Attributes, "rpc.system.name") != "mqttrpc" || attrValue(dp.Attributes, "rpc.method") != echoMethod {
			t.Errorf("%s data point attributes %v", m.Name, dp.Attributes.ToSlice())
		}
		status := attrValue(dp.Attributes, "rpc.response.status_code")
		if errorType, failed := dp.Attributes.Value("error.type"); failed && errorType.String() != status {
			t.Errorf("%s: error.type %q with status %q", m.Name, errorType.String(), status)
		}
		counts[status] += dp.Count
	}
	return counts
}

// activeCalls returns an up-down counter's value, summed over methods.
func activeCalls(t *testing.T, rm metricdata.ResourceMetrics, name string) int64 {
	t.Helper()
	sum, ok := findMetric(t, rm, name).Data.(metricdata.Sum[int64])
	if !ok || sum.IsMonotonic {
		t.Fatalf("%s is not a non-monotonic int64 sum", name)
	}
	var total int64
	for _, dp := range sum.DataPoints {
		total += dp.Value
	}
	return total
}

// TestCallMetrics: N calls make N durations per side, and the calls in
// flight go up during a call and back to zero.
func TestCallMetrics(t *testing.T) {
	url := newTestbrokerURL(t)
	tel := newTelemetry(t)
	duringCall := make(chan metricdata.ResourceMetrics, 1)
	startServer(t, url, func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		switch in.GetValue() {
		case "measure":
			var rm metricdata.ResourceMetrics
			if err := tel.metrics.Collect(ctx, &rm); err != nil {
				return nil, err
			}
			duringCall <- rm
		case "fail":
			return nil, rpc.Errorf(rpc.FailedPrecondition, "not now")
		}
		return echoBack(ctx, in)
	}, rpc.WithServerID("dev-1"), rpc.WithInterceptors(tel.interceptor))
	client := newClient(t, url, rpc.WithInterceptors(tel.interceptor))

	const n = 5
	if _, err := echo(testCtx(t), client, "measure", rpc.To("dev-1")); err != nil {
		t.Fatal(err)
	}
	during := <-duringCall
	if c, s := activeCalls(t, during, otelrpc.ClientActiveCallsMetric), activeCalls(t, during, otelrpc.ServerActiveCallsMetric); c != 1 || s != 1 {
		t.Errorf("calls in flight during a call: client %d, server %d; want 1 and 1", c, s)
	}
	for range n - 2 {
		if _, err := echo(testCtx(t), client, "x", rpc.To("dev-1")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := echo(testCtx(t), client, "fail", rpc.To("dev-1")); rpc.CodeOf(err) != rpc.FailedPrecondition {
		t.Fatalf("got %v, want FailedPrecondition", err)
	}
	tel.waitSpans(t, 2*n)

	rm := tel.collect(t)
	for _, name := range []string{"rpc.client.call.duration", "rpc.server.call.duration"} {
		counts := durationCounts(t, findMetric(t, rm, name))
		if counts["OK"] != n-1 || counts["FAILED_PRECONDITION"] != 1 || len(counts) != 2 {
			t.Errorf("%s counts by status %v, want OK=%d FAILED_PRECONDITION=1", name, counts, n-1)
		}
	}
	for _, name := range []string{otelrpc.ClientActiveCallsMetric, otelrpc.ServerActiveCallsMetric} {
		if got := activeCalls(t, rm, name); got != 0 {
			t.Errorf("%s = %d after the calls, want 0", name, got)
		}
	}
}

// TestDropMetrics: the drop hook counts requests the server drops, by
// reason, as the server's own Stats do.
func TestDropMetrics(t *testing.T) {
	eachBroker(t, func(t *testing.T, url string) {
		tel := newTelemetry(t)
		srv := startServer(t, url, echoBack, rpc.WithServerID("dev-1"),
			rpc.WithInterceptors(tel.interceptor), rpc.WithDropHook(tel.interceptor.DropHook()), rpc.WithLogger(nil))
		clientID := uniqueID("raw")
		responseTopic := "mqttrpc/responses/" + clientID
		raw := newRawClient(t, url, clientID)
		raw.SubscribeTo(t, responseTopic)
		topic := "mqttrpc/" + echoServiceName + "/dev-1/Echo"

		raw.PublishTo(t, topic, &paho.PublishProperties{ResponseTopic: "evil/topic", CorrelationData: []byte("evil")}, "")
		raw.PublishTo(t, topic, &paho.PublishProperties{ResponseTopic: responseTopic, CorrelationData: []byte("late"),
			User: paho.UserProperties{{Key: "mqttrpc-timeout", Value: "0"}}}, "")
		raw.PublishTo(t, topic, &paho.PublishProperties{ResponseTopic: "evil/again", CorrelationData: []byte("evil-2")}, "")
		// The server handles requests in order: once this one is answered,
		// the drops have been counted.
		raw.PublishTo(t, topic, &paho.PublishProperties{ResponseTopic: responseTopic, CorrelationData: []byte("after"), ContentType: "application/json"}, `"x"`)
		if p := raw.Next(10 * time.Second); p == nil || string(p.Properties.CorrelationData) != "after" {
			t.Fatalf("got %v, want only the answer to the last request", p)
		}

		sum, ok := findMetric(t, tel.collect(t), otelrpc.DroppedRequestsMetric).Data.(metricdata.Sum[int64])
		if !ok || !sum.IsMonotonic {
			t.Fatalf("%s is not a monotonic int64 sum", otelrpc.DroppedRequestsMetric)
		}
		got := map[string]int64{}
		for _, dp := range sum.DataPoints {
			if attrValue(dp.Attributes, "rpc.system.name") != "mqttrpc" {
				t.Errorf("data point attributes %v", dp.Attributes.ToSlice())
			}
			got[attrValue(dp.Attributes, otelrpc.DropReasonKey)] += dp.Value
		}
		want := map[string]int64{"response_topic_policy": 2, "expired": 1}
		if len(got) != len(want) || got["response_topic_policy"] != 2 || got["expired"] != 1 {
			t.Errorf("dropped requests by reason %v, want %v", got, want)
		}
		stats := srv.Stats()
		if int64(stats.Dropped[rpc.DropResponseTopicPolicy]) != got["response_topic_policy"] || int64(stats.Dropped[rpc.DropExpired]) != got["expired"] {
			t.Errorf("metric %v disagrees with Stats %v", got, stats.Dropped)
		}
	})
}
