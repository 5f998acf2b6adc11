package rpc_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/mqttrpc/mqttrpc/examples/thermostat/thermostatv1"
	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// exampleThermostat answers GetReading.
type exampleThermostat struct {
	thermostatv1.UnimplementedThermostatServer
}

func (exampleThermostat) GetReading(context.Context, *thermostatv1.GetReadingRequest) (*thermostatv1.Reading, error) {
	return &thermostatv1.Reading{DeviceId: "dev-7", Celsius: 21.5}, nil
}

// A tool that has no .proto files reads a service's schema from the
// broker (the device announced it) and calls a method with JSON, as the
// mqttrpc command line does.
func ExampleFleet_Schema() {
	broker, err := testbroker.New()
	if err != nil {
		log.Fatal(err)
	}
	defer broker.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The device: generated code, nothing to do for reflection.
	devConn, err := rpc.Dial(ctx, broker.URL(), rpc.WithClientID("dev-7"))
	if err != nil {
		log.Fatal(err)
	}
	defer devConn.Close(context.Background())
	srv := rpc.NewServer(devConn, rpc.WithServerID("dev-7"))
	thermostatv1.RegisterThermostatServer(srv, exampleThermostat{})
	if err := srv.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown(context.Background())

	// The tool.
	conn, err := rpc.Dial(ctx, broker.URL())
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(context.Background())
	fleet, err := rpc.WatchFleet(ctx, conn)
	if err != nil {
		log.Fatal(err)
	}
	defer fleet.Close(context.Background())
	set, err := fleet.Schema(ctx, "example.thermostat.v1.Thermostat")
	if err != nil {
		log.Fatal(err)
	}
	files, err := protodesc.NewFiles(set)
	if err != nil {
		log.Fatal(err)
	}
	d, err := files.FindDescriptorByName("example.thermostat.v1.Thermostat")
	if err != nil {
		log.Fatal(err)
	}
	method := d.(protoreflect.ServiceDescriptor).Methods().ByName("GetReading")
	fmt.Println("rpc", method.Name(), method.Input().FullName(), "returns", method.Output().FullName())

	client := rpc.NewClient(conn)
	defer client.Close(context.Background())
	req := dynamicpb.NewMessage(method.Input())
	if err := protojson.Unmarshal([]byte(`{}`), req); err != nil {
		log.Fatal(err)
	}
	resp := dynamicpb.NewMessage(method.Output())
	if err := client.Call(ctx, "example.thermostat.v1.Thermostat", "GetReading", req, resp, rpc.To("dev-7")); err != nil {
		log.Fatal(err)
	}
	fields := method.Output().Fields()
	fmt.Println(resp.Get(fields.ByName("device_id")), resp.Get(fields.ByName("celsius")))
	// Output:
	// rpc GetReading example.thermostat.v1.GetReadingRequest returns example.thermostat.v1.Reading
	// dev-7 21.5
}
