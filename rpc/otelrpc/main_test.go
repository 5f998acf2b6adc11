package otelrpc_test

import (
	"context"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/internal/rpctest"
	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/rpc/otelrpc"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// eachBroker runs f against testbroker and against Mosquitto (skipped when
// Mosquitto is not installed, unless MQTTRPC_REQUIRE_MOSQUITTO=1).
func eachBroker(t *testing.T, f func(t *testing.T, brokerURL string)) {
	t.Helper()
	rpctest.EachBroker(t, func(t *testing.T, b *rpctest.Broker) { f(t, b.URL) })
}

func testCtx(t *testing.T) context.Context { return rpctest.Context(t, 30*time.Second) }

func uniqueID(prefix string) string { return rpctest.UniqueID(prefix) }

// telemetry is an Interceptor whose spans and metrics a test can read.
type telemetry struct {
	interceptor *otelrpc.Interceptor
	spans       *tracetest.SpanRecorder
	metrics     *sdkmetric.ManualReader
}

func newTelemetry(t *testing.T, opts ...otelrpc.Option) *telemetry {
	t.Helper()
	tel := &telemetry{spans: tracetest.NewSpanRecorder(), metrics: sdkmetric.NewManualReader()}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(tel.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(tel.metrics))
	t.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	var err error
	tel.interceptor, err = otelrpc.NewInterceptor(append([]otelrpc.Option{otelrpc.WithTracerProvider(tp), otelrpc.WithMeterProvider(mp)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return tel
}

// span returns the one ended span of the given kind, failing unless there
// is exactly one.
func (tel *telemetry) span(t *testing.T, kind string) sdktrace.ReadOnlySpan {
	t.Helper()
	var found []sdktrace.ReadOnlySpan
	for _, s := range tel.spans.Ended() {
		if s.SpanKind().String() == kind {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d %s spans ended, want 1 (all: %v)", len(found), kind, spanNames(tel.spans.Ended()))
	}
	return found[0]
}

// waitSpans waits until n spans have ended: a server span ends after the
// answer is built, possibly after the client has its response.
func (tel *telemetry) waitSpans(t *testing.T, n int) {
	t.Helper()
	rpctest.WaitFor(t, func() bool { return len(tel.spans.Ended()) >= n })
}

func spanNames(spans []sdktrace.ReadOnlySpan) []string {
	var names []string
	for _, s := range spans {
		names = append(names, s.SpanKind().String()+" "+s.Name())
	}
	return names
}

func (tel *telemetry) collect(t *testing.T) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := tel.metrics.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return rm
}

// dial connects to the broker and closes the connection at cleanup.
func dial(t *testing.T, url, clientID string) *rpc.Conn {
	t.Helper()
	return rpctest.Dial(t, url, rpc.WithClientID(clientID))
}

// newClient dials and returns a client, closed at cleanup.
func newClient(t *testing.T, url string, opts ...rpc.ClientOption) *rpc.Client {
	t.Helper()
	c := rpc.NewClient(dial(t, url, uniqueID("caller")), opts...)
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// startServer dials, registers the echo service with handler and starts
// serving; it shuts down at cleanup.
func startServer(t *testing.T, url string, handler echoFunc, opts ...rpc.ServerOption) *rpc.Server {
	t.Helper()
	srv := rpc.NewServer(dial(t, url, uniqueID("server")), opts...)
	srv.RegisterService(&echoDesc, handler)
	if err := srv.Start(testCtx(t)); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return srv
}

// echo calls Echo with value.
func echo(ctx context.Context, c *rpc.Client, value string, opts ...rpc.CallOption) (string, error) {
	out := new(wrapperspb.StringValue)
	err := c.Call(ctx, echoServiceName, "Echo", wrapperspb.String(value), out, opts...)
	return out.GetValue(), err
}

func newTestbrokerURL(t *testing.T) string { return rpctest.NewTestbroker(t).URL }
