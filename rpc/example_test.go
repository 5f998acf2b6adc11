package rpc_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// greeter is a service implementation; generated code would declare its
// interface and descriptor.
type greeter struct{}

func (greeter) Greet(ctx context.Context, name *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	if name.GetValue() == "" {
		return nil, rpc.Errorf(rpc.InvalidArgument, "name is empty")
	}
	call, _ := rpc.CallFromContext(ctx)
	return wrapperspb.String("hello " + name.GetValue() + " from " + call.Target()), nil
}

var greeterDesc = rpc.ServiceDesc{
	ServiceName: "example.v1.Greeter",
	Methods: []rpc.MethodDesc{{
		MethodName: "Greet",
		QoS:        rpc.QoS1,
		NewRequest: func() any { return new(wrapperspb.StringValue) },
		Handler: func(srv any, ctx context.Context, req any) (any, error) {
			return srv.(greeter).Greet(ctx, req.(*wrapperspb.StringValue))
		},
	}},
}

// A server with ID "dev-1" and a client calling it through an embedded broker.
func Example() {
	broker, err := testbroker.New()
	if err != nil {
		log.Fatal(err)
	}
	defer broker.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	serverConn, err := rpc.Dial(ctx, broker.URL(), rpc.WithClientID("dev-1"))
	if err != nil {
		log.Fatal(err)
	}
	defer serverConn.Close(context.Background())
	server := rpc.NewServer(serverConn, rpc.WithServerID("dev-1"))
	server.RegisterService(&greeterDesc, greeter{})
	if err := server.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer server.Shutdown(context.Background())

	clientConn, err := rpc.Dial(ctx, broker.URL(), rpc.WithClientID("backend"))
	if err != nil {
		log.Fatal(err)
	}
	defer clientConn.Close(context.Background())
	client := rpc.NewClient(clientConn)

	reply := new(wrapperspb.StringValue)
	err = client.Call(ctx, "example.v1.Greeter", "Greet", wrapperspb.String("world"), reply, rpc.To("dev-1"))
	fmt.Println(reply.GetValue(), err)

	err = client.Call(ctx, "example.v1.Greeter", "Greet", wrapperspb.String(""), reply, rpc.To("dev-1"))
	fmt.Println(rpc.CodeOf(err), err)
	// Output:
	// hello world from dev-1 <nil>
	// InvalidArgument InvalidArgument: name is empty
}

// Codes print as their gRPC names and travel as decimals.
func ExampleCode() {
	fmt.Println(rpc.Unavailable, uint32(rpc.Unavailable))
	var c rpc.Code
	_ = c.UnmarshalText([]byte("PermissionDenied"))
	fmt.Println(c == rpc.PermissionDenied)
	// Output:
	// Unavailable 14
	// true
}
