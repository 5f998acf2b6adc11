package otelrpc_test

import (
	"context"
	"fmt"
	"log"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/rpc/otelrpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// echoServer is a hand-written service, as generated code would declare it:
// one method, Echo, whose behaviour each test chooses.
type echoServer interface {
	Echo(context.Context, *wrapperspb.StringValue) (*wrapperspb.StringValue, error)
}

type echoFunc func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error)

func (f echoFunc) Echo(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	return f(ctx, in)
}

func echoBack(_ context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	return wrapperspb.String(in.GetValue()), nil
}

const echoServiceName = "test.v1.EchoService"

// echoMethod is the span name and rpc.method of Echo.
const echoMethod = echoServiceName + "/Echo"

var echoDesc = rpc.ServiceDesc{
	ServiceName: echoServiceName,
	HandlerType: (*echoServer)(nil),
	Methods: []rpc.MethodDesc{{
		MethodName: "Echo",
		QoS:        rpc.QoS1,
		NewRequest: func() any { return new(wrapperspb.StringValue) },
		Handler: func(srv any, ctx context.Context, req any) (any, error) {
			return srv.(echoServer).Echo(ctx, req.(*wrapperspb.StringValue))
		},
	}},
}

// One Interceptor on a server and on a client: the server's span continues
// the client's trace across the broker.
func Example() {
	broker, err := testbroker.New()
	if err != nil {
		log.Fatal(err)
	}
	defer broker.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Record spans in memory; a program would export them.
	spans := tracetest.NewSpanRecorder()
	tracerProvider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tracerProvider.Shutdown(context.Background())
	interceptor, err := otelrpc.NewInterceptor(otelrpc.WithTracerProvider(tracerProvider))
	if err != nil {
		log.Fatal(err)
	}

	serverConn, err := rpc.Dial(ctx, broker.URL(), rpc.WithClientID("dev-1"))
	if err != nil {
		log.Fatal(err)
	}
	defer serverConn.Close(context.Background())
	server := rpc.NewServer(serverConn,
		rpc.WithServerID("dev-1"),
		rpc.WithInterceptors(interceptor),
		rpc.WithDropHook(interceptor.DropHook()),
	)
	server.RegisterService(&echoDesc, echoFunc(echoBack))
	if err := server.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer server.Shutdown(context.Background())

	clientConn, err := rpc.Dial(ctx, broker.URL(), rpc.WithClientID("caller"))
	if err != nil {
		log.Fatal(err)
	}
	defer clientConn.Close(context.Background())
	client := rpc.NewClient(clientConn, rpc.WithInterceptors(interceptor))
	defer client.Close(context.Background())

	out := new(wrapperspb.StringValue)
	if err := client.Call(ctx, echoServiceName, "Echo", wrapperspb.String("hi"), out, rpc.To("dev-1")); err != nil {
		log.Fatal(err)
	}

	// The server span ends before the answer is published, so it comes first.
	ended := spans.Ended()
	for _, s := range ended {
		fmt.Println(s.SpanKind(), s.Name())
	}
	serverSpan, clientSpan := ended[0], ended[1]
	fmt.Println("one trace:", serverSpan.SpanContext().TraceID() == clientSpan.SpanContext().TraceID())
	fmt.Println("server span's parent is the client span:", serverSpan.Parent().SpanID() == clientSpan.SpanContext().SpanID())
	// Output:
	// server test.v1.EchoService/Echo
	// client test.v1.EchoService/Echo
	// one trace: true
	// server span's parent is the client span: true
}
