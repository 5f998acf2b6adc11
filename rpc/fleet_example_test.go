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

// startGreeter starts a greeter with server ID id on its own connection;
// stop shuts it down and closes the connection.
func startGreeter(ctx context.Context, url, id string, opts ...rpc.ServerOption) (srv *rpc.Server, stop func()) {
	conn, err := rpc.Dial(ctx, url, rpc.WithClientID(id))
	if err != nil {
		log.Fatal(err)
	}
	srv = rpc.NewServer(conn, append([]rpc.ServerOption{rpc.WithServerID(id)}, opts...)...)
	srv.RegisterService(&greeterDesc, greeter{})
	if err := srv.Start(ctx); err != nil {
		log.Fatal(err)
	}
	return srv, func() {
		_ = srv.Shutdown(context.Background())
		_ = conn.Close(context.Background())
	}
}

// A caller lists the online devices, broadcasts to them (the broadcast
// ends when each has answered, not at its deadline), and fails fast on a
// call to a device that went offline.
func ExampleWatchFleet() {
	broker, err := testbroker.New()
	if err != nil {
		log.Fatal(err)
	}
	defer broker.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	_, stop1 := startGreeter(ctx, broker.URL(), "dev-1", rpc.WithLabels(map[string]string{"model": "t-1000"}))
	defer stop1()
	_, stop2 := startGreeter(ctx, broker.URL(), "dev-2", rpc.WithLabels(map[string]string{"model": "t-2000"}))

	conn, err := rpc.Dial(ctx, broker.URL(), rpc.WithClientID("backend"))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(context.Background())
	fleet, err := rpc.WatchFleet(ctx, conn) // returns with every retained record
	if err != nil {
		log.Fatal(err)
	}
	defer fleet.Close(context.Background())
	for _, s := range fleet.Servers("example.v1.Greeter") {
		fmt.Println(s.ID, s.Online, s.Labels["model"], s.Health)
	}

	client := rpc.NewClient(conn)
	defer client.Close(context.Background())
	stub := client.Stub(&greeterDesc, "Greet")
	start := time.Now()
	answered := 0
	for r := range rpc.Broadcast[wrapperspb.StringValue](ctx, stub, wrapperspb.String("fleet")) {
		if r.Err == nil {
			answered++
		}
	}
	fmt.Println("answers:", answered, "before the deadline:", time.Since(start) < 5*time.Second)

	stop2() // dev-2 shuts down: its record says offline
	for ev, err := range fleet.Watch(ctx) {
		if err != nil {
			log.Fatal(err)
		}
		if ev.Kind == rpc.ServerOffline && ev.Server.ID == "dev-2" {
			break
		}
	}
	err = client.Call(ctx, "example.v1.Greeter", "Greet", wrapperspb.String("x"), new(wrapperspb.StringValue), rpc.To("dev-2"))
	fmt.Println(rpc.CodeOf(err))
	// Output:
	// dev-1 true t-1000 SERVING
	// dev-2 true t-2000 SERVING
	// answers: 2 before the deadline: true
	// Unavailable
}

// A server sets its health at run time; callers that watch the fleet see
// it in the presence record.
func ExampleServer_SetHealth() {
	broker, err := testbroker.New()
	if err != nil {
		log.Fatal(err)
	}
	defer broker.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv, stop := startGreeter(ctx, broker.URL(), "dev-1")
	defer stop()

	conn, err := rpc.Dial(ctx, broker.URL(), rpc.WithClientID("backend"))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(context.Background())
	fleet, err := rpc.WatchFleet(ctx, conn)
	if err != nil {
		log.Fatal(err)
	}
	defer fleet.Close(context.Background())

	if err := srv.SetHealth("example.v1.Greeter", rpc.HealthNotServing); err != nil {
		log.Fatal(err)
	}
	for ev := range fleet.Watch(ctx) { // the current state, then changes
		if ev.Server.ID == "dev-1" && ev.Server.Services[0].Health == rpc.HealthNotServing {
			break
		}
	}
	status, err := fleet.Health("dev-1", "example.v1.Greeter")
	fmt.Println(status, err)
	// Output:
	// NOT_SERVING <nil>
}

// Device code reacts to its link going up and down.
func ExampleWithOnConnectionUp() {
	broker, err := testbroker.New()
	if err != nil {
		log.Fatal(err)
	}
	defer broker.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	up := make(chan struct{}, 1)
	conn, err := rpc.Dial(ctx, broker.URL(), rpc.WithClientID("dev-1"),
		rpc.WithOnConnectionUp(func() { up <- struct{}{} }),
		rpc.WithOnConnectionDown(func(err error) { fmt.Println("down:", rpc.CodeOf(err)) }))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(context.Background())
	<-up
	fmt.Println("up")
	// Output:
	// up
}
