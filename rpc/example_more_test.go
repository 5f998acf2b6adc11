package rpc_test

import (
	"context"
	"fmt"
	"log"
	"net/url"
	"slices"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// serveGreeter connects to the broker as id and serves the greeter of
// Example under that server ID until the returned function is called.
func serveGreeter(ctx context.Context, brokerURL, id string, opts ...rpc.ServerOption) (stop func()) {
	conn, err := rpc.Dial(ctx, brokerURL, rpc.WithClientID(id))
	if err != nil {
		log.Fatal(err)
	}
	server := rpc.NewServer(conn, append([]rpc.ServerOption{rpc.WithServerID(id)}, opts...)...)
	server.RegisterService(&greeterDesc, greeter{})
	if err := server.Start(ctx); err != nil {
		log.Fatal(err)
	}
	return func() {
		server.Shutdown(context.Background())
		conn.Close(context.Background())
	}
}

// A client interceptor puts a token on every call; a server interceptor
// refuses calls without it, before the handler runs.
func ExampleWithInterceptors() {
	broker, err := testbroker.New()
	if err != nil {
		log.Fatal(err)
	}
	defer broker.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	requireToken := rpc.UnaryInterceptorFunc(func(next rpc.UnaryFunc) rpc.UnaryFunc {
		return func(ctx context.Context, req any) (any, error) {
			call, _ := rpc.CallFromContext(ctx)
			if call.RequestMetadata().Get("authorization") != "Bearer s3cret" {
				return nil, rpc.Errorf(rpc.Unauthenticated, "%s needs a token", call.Procedure())
			}
			return next(ctx, req)
		}
	})
	stop := serveGreeter(ctx, broker.URL(), "dev-1", rpc.WithInterceptors(requireToken))
	defer stop()

	addToken := rpc.UnaryInterceptorFunc(func(next rpc.UnaryFunc) rpc.UnaryFunc {
		return func(ctx context.Context, req any) (any, error) {
			call, _ := rpc.CallFromContext(ctx)
			call.RequestMetadata().Set("authorization", "Bearer s3cret")
			return next(ctx, req)
		}
	})
	conn, err := rpc.Dial(ctx, broker.URL(), rpc.WithClientID("backend"))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(context.Background())
	withToken := rpc.NewClient(conn, rpc.WithInterceptors(addToken))
	defer withToken.Close(context.Background())
	without := rpc.NewClient(conn) // Clients of one Conn share it
	defer without.Close(context.Background())

	reply := new(wrapperspb.StringValue)
	err = withToken.Call(ctx, "example.v1.Greeter", "Greet", wrapperspb.String("world"), reply, rpc.To("dev-1"))
	fmt.Println(reply.GetValue(), err)
	err = without.Call(ctx, "example.v1.Greeter", "Greet", wrapperspb.String("world"), new(wrapperspb.StringValue), rpc.To("dev-1"))
	fmt.Println(err)
	// Output:
	// hello world from dev-1 <nil>
	// Unauthenticated: /example.v1.Greeter/Greet needs a token
}

// A broadcast asks every server of the service (target "_all") and yields
// each answer with the ID of the server that gave it. It lasts until its
// deadline, since nobody knows how many servers will answer: this one stops
// after three.
func ExampleClient_Broadcast() {
	broker, err := testbroker.New()
	if err != nil {
		log.Fatal(err)
	}
	defer broker.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, id := range []string{"dev-1", "dev-2", "dev-3"} {
		stop := serveGreeter(ctx, broker.URL(), id)
		defer stop()
	}

	conn, err := rpc.Dial(ctx, broker.URL(), rpc.WithClientID("backend"))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(context.Background())
	client := rpc.NewClient(conn)
	defer client.Close(context.Background())

	var answers []string
	newResp := func() any { return new(wrapperspb.StringValue) }
	for r := range client.Broadcast(ctx, "example.v1.Greeter", "Greet", wrapperspb.String("fleet"), newResp) {
		if r.Err != nil {
			answers = append(answers, fmt.Sprintf("%s: %v", r.Target, r.Err))
		} else {
			answers = append(answers, fmt.Sprintf("%s: %s", r.Target, r.Response.(*wrapperspb.StringValue).GetValue()))
		}
		if len(answers) == 3 {
			break
		}
	}
	slices.Sort(answers) // they come in any order
	for _, a := range answers {
		fmt.Println(a)
	}
	// Output:
	// dev-1: hello fleet from _all
	// dev-2: hello fleet from _all
	// dev-3: hello fleet from _all
}

// WithRetry republishes a request the broker did not take. Here the broker
// refuses the next publishes to dev-1 (PUBACK 0x80): a client without
// retries fails at once with Unavailable, one with three attempts gets
// through on the third. A retry reuses the request's correlation data, so it
// cannot run the handler twice.
func ExampleWithRetry() {
	broker, err := testbroker.New()
	if err != nil {
		log.Fatal(err)
	}
	defer broker.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stop := serveGreeter(ctx, broker.URL(), "dev-1")
	defer stop()

	conn, err := rpc.Dial(ctx, broker.URL(), rpc.WithClientID("backend"))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(context.Background())
	once := rpc.NewClient(conn)
	defer once.Close(context.Background())
	patient := rpc.NewClient(conn, rpc.WithRetry(rpc.RetryPolicy{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond}))
	defer patient.Close(context.Background())

	const topic = "mqttrpc/example.v1.Greeter/dev-1/Greet"
	reply := new(wrapperspb.StringValue)
	broker.RejectPublishes(topic, 1, 0x80)
	err = once.Call(ctx, "example.v1.Greeter", "Greet", wrapperspb.String("world"), reply, rpc.To("dev-1"))
	fmt.Println("without retries:", rpc.CodeOf(err))

	broker.RejectPublishes(topic, 2, 0x80)
	err = patient.Call(ctx, "example.v1.Greeter", "Greet", wrapperspb.String("world"), reply, rpc.To("dev-1"))
	fmt.Println("with 3 attempts:", reply.GetValue(), err)
	// Output:
	// without retries: Unavailable
	// with 3 attempts: hello world from dev-1 <nil>
}

// In a gateway, which serves every target, the handler reads from the Call
// in its context which device a request is for. Interceptors read the same
// Call, on either side.
func ExampleCallFromContext() {
	broker, err := testbroker.New()
	if err != nil {
		log.Fatal(err)
	}
	defer broker.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	gatewayConn, err := rpc.Dial(ctx, broker.URL(), rpc.WithClientID("gateway"))
	if err != nil {
		log.Fatal(err)
	}
	defer gatewayConn.Close(context.Background())
	gateway := rpc.NewServer(gatewayConn, rpc.WithGateway())
	gateway.RegisterService(&greeterDesc, greeter{}) // greeter.Greet calls rpc.CallFromContext
	if err := gateway.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer gateway.Shutdown(context.Background())

	logCalls := rpc.UnaryInterceptorFunc(func(next rpc.UnaryFunc) rpc.UnaryFunc {
		return func(ctx context.Context, req any) (any, error) {
			call, _ := rpc.CallFromContext(ctx)
			resp, err := next(ctx, req)
			fmt.Printf("client: %s to %s on %s: %v\n", call.Procedure(), call.Target(), call.Topic(), rpc.CodeOf(err))
			return resp, err
		}
	})
	conn, err := rpc.Dial(ctx, broker.URL(), rpc.WithClientID("backend"))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(context.Background())
	client := rpc.NewClient(conn, rpc.WithInterceptors(logCalls))
	defer client.Close(context.Background())

	for _, device := range []string{"dev-7", "dev-8"} {
		reply := new(wrapperspb.StringValue)
		if err := client.Call(ctx, "example.v1.Greeter", "Greet", wrapperspb.String("world"), reply, rpc.To(device)); err != nil {
			log.Fatal(err)
		}
		fmt.Println(reply.GetValue())
	}
	_, outside := rpc.CallFromContext(ctx)
	fmt.Println("a call outside calls:", outside)
	// Output:
	// client: /example.v1.Greeter/Greet to dev-7 on mqttrpc/example.v1.Greeter/dev-7/Greet: OK
	// hello world from dev-7
	// client: /example.v1.Greeter/Greet to dev-8 on mqttrpc/example.v1.Greeter/dev-8/Greet: OK
	// hello world from dev-8
	// a call outside calls: false
}

// Metadata travels as MQTT user properties: WithMetadata adds it to a
// request, handlers and server interceptors read it from the Call and add
// to the response's, and ResponseMetadata hands that to the caller.
func ExampleWithMetadata() {
	broker, err := testbroker.New()
	if err != nil {
		log.Fatal(err)
	}
	defer broker.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	echoRequestID := rpc.UnaryInterceptorFunc(func(next rpc.UnaryFunc) rpc.UnaryFunc {
		return func(ctx context.Context, req any) (any, error) {
			call, _ := rpc.CallFromContext(ctx)
			call.ResponseMetadata().Set("x-request-id", call.RequestMetadata().Get("x-request-id"))
			call.ResponseMetadata().Set("x-firmware", "2.4.1")
			return next(ctx, req)
		}
	})
	stop := serveGreeter(ctx, broker.URL(), "dev-1", rpc.WithInterceptors(echoRequestID))
	defer stop()

	conn, err := rpc.Dial(ctx, broker.URL(), rpc.WithClientID("backend"))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(context.Background())
	client := rpc.NewClient(conn)
	defer client.Close(context.Background())

	var header rpc.Metadata
	reply := new(wrapperspb.StringValue)
	err = client.Call(ctx, "example.v1.Greeter", "Greet", wrapperspb.String("world"), reply,
		rpc.To("dev-1"),
		rpc.WithMetadata(rpc.Metadata{"x-request-id": {"req-42"}}),
		rpc.ResponseMetadata(&header))
	fmt.Println(reply.GetValue(), err)
	fmt.Println("x-request-id:", header.Get("x-request-id"))
	fmt.Println("x-firmware:", header.Get("x-firmware"))
	// Output:
	// hello world from dev-1 <nil>
	// x-request-id: req-42
	// x-firmware: 2.4.1
}

// NewConnection runs mqttrpc over an autopaho connection the application
// configures and keeps using for its own traffic: its own
// OnPublishReceived handlers get every message that is not mqttrpc's.
func ExampleNewConnection() {
	broker, err := testbroker.New()
	if err != nil {
		log.Fatal(err)
	}
	defer broker.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	brokerURL, err := url.Parse(broker.URL())
	if err != nil {
		log.Fatal(err)
	}
	own := make(chan *paho.Publish, 1)
	conn, err := rpc.NewConnection(ctx, autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{brokerURL},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		ClientConfig: paho.ClientConfig{
			ClientID: "dev-1",
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){
				func(pr paho.PublishReceived) (bool, error) {
					own <- pr.Packet
					return true, nil
				},
			},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := conn.AwaitConnection(ctx); err != nil {
		log.Fatal(err)
	}
	// With NewConnection the application disconnects its manager itself,
	// after closing the Conn.
	defer conn.Manager().Disconnect(context.Background())
	defer conn.Close(context.Background())

	server := rpc.NewServer(conn, rpc.WithServerID("dev-1"))
	server.RegisterService(&greeterDesc, greeter{})
	if err := server.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer server.Shutdown(context.Background())

	// The application's own traffic on the same connection.
	cm := conn.Manager()
	if _, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "status/dev-1", QoS: 1}}}); err != nil {
		log.Fatal(err)
	}
	if _, err := cm.Publish(ctx, &paho.Publish{Topic: "status/dev-1", QoS: 1, Payload: []byte("online")}); err != nil {
		log.Fatal(err)
	}
	msg := <-own
	fmt.Printf("own traffic: %s %s\n", msg.Topic, msg.Payload)

	// And a call to the server on it, from a client of another connection.
	backend, err := rpc.Dial(ctx, broker.URL(), rpc.WithClientID("backend"))
	if err != nil {
		log.Fatal(err)
	}
	defer backend.Close(context.Background())
	client := rpc.NewClient(backend)
	defer client.Close(context.Background())
	reply := new(wrapperspb.StringValue)
	err = client.Call(ctx, "example.v1.Greeter", "Greet", wrapperspb.String("world"), reply, rpc.To("dev-1"))
	fmt.Println(reply.GetValue(), err)
	// Output:
	// own traffic: status/dev-1 online
	// hello world from dev-1 <nil>
}
