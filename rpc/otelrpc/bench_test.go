package otelrpc_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/rpc/otelrpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// discardSpans is a SpanProcessor that drops every span: the benchmark
// measures making spans, not exporting them.
type discardSpans struct{}

func (discardSpans) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (discardSpans) OnEnd(sdktrace.ReadOnlySpan)                     {}
func (discardSpans) Shutdown(context.Context) error                  { return nil }
func (discardSpans) ForceFlush(context.Context) error                { return nil }

// BenchmarkCall makes unary calls through testbroker, with the interceptor
// on both sides (otel=on: every span sampled and recorded, metrics
// aggregated) or without (otel=off), one call at a time (conc=1) or 16 at
// once (conc=16). It reports calls/s and the CPU time the whole process
// (client, server and broker) spent per call. Compare with
//
//	benchstat -col /otel bench.txt
func BenchmarkCall(b *testing.B) {
	for _, conc := range []int{1, 16} {
		for _, withOtel := range []bool{false, true} {
			name := fmt.Sprintf("conc=%d/otel=%s", conc, map[bool]string{false: "off", true: "on"}[withOtel])
			b.Run(name, func(b *testing.B) { benchmarkCall(b, conc, withOtel) })
		}
	}
}

func benchmarkCall(b *testing.B, conc int, withOtel bool) {
	url := testbroker.Start(b).URL()
	var serverOpts []rpc.ServerOption
	var clientOpts []rpc.ClientOption
	if withOtel {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(discardSpans{}))
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		b.Cleanup(func() {
			_ = tp.Shutdown(context.Background())
			_ = mp.Shutdown(context.Background())
		})
		interceptor, err := otelrpc.NewInterceptor(otelrpc.WithTracerProvider(tp), otelrpc.WithMeterProvider(mp))
		if err != nil {
			b.Fatal(err)
		}
		serverOpts = append(serverOpts, rpc.WithInterceptors(interceptor), rpc.WithDropHook(interceptor.DropHook()))
		clientOpts = append(clientOpts, rpc.WithInterceptors(interceptor))
	}

	conn, err := rpc.Dial(context.Background(), url, rpc.WithClientID(uniqueID("bench-server")))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close(context.Background()) })
	srv := rpc.NewServer(conn, append(serverOpts, rpc.WithServerID("dev-1"))...)
	srv.RegisterService(&echoDesc, echoFunc(echoBack))
	if err := srv.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = srv.Shutdown(context.Background()) })

	clientConn, err := rpc.Dial(context.Background(), url, rpc.WithClientID(uniqueID("bench-caller")))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = clientConn.Close(context.Background()) })
	client := rpc.NewClient(clientConn, clientOpts...)
	b.Cleanup(func() { _ = client.Close(context.Background()) })
	ctx := context.Background()
	if _, err := echo(ctx, client, "warm-up", rpc.To("dev-1")); err != nil {
		b.Fatal(err)
	}

	b.ReportAllocs()
	cpuBefore, cpuOK := processCPU()
	b.ResetTimer()
	if conc == 1 {
		for range b.N {
			if _, err := echo(ctx, client, "ping", rpc.To("dev-1")); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		// RunParallel starts parallelism × GOMAXPROCS goroutines.
		b.SetParallelism(max(conc/runtime.GOMAXPROCS(0), 1))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := echo(ctx, client, "ping", rpc.To("dev-1")); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
	if cpuAfter, ok := processCPU(); ok && cpuOK {
		// CPU per call is steadier than calls/s on a busy machine.
		b.ReportMetric(float64((cpuAfter-cpuBefore).Microseconds())/float64(b.N), "cpu-µs/call")
	}
}
