package main

import (
	"context"
	"fmt"
	"time"

	"github.com/mqttrpc/mqttrpc/examples/thermostat/internal/device"
	"github.com/mqttrpc/mqttrpc/examples/thermostat/thermostatv1"
	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// A server stream: a device sends its readings, the caller ranges over
// them. Cancelling ctx (or breaking out of the loop) ends the stream on
// both sides.
func Example_watchReadings() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	broker, err := testbroker.New()
	if err != nil {
		panic(err)
	}
	defer broker.Close()
	srv, srvConn, err := device.Serve(ctx, broker.URL(), "dev-1")
	if err != nil {
		panic(err)
	}
	defer srvConn.Close(context.Background())
	defer srv.Shutdown(context.Background())

	conn, err := rpc.Dial(ctx, broker.URL())
	if err != nil {
		panic(err)
	}
	defer conn.Close(context.Background())
	client := rpc.NewClient(conn)
	defer client.Close(context.Background())
	thermostat := thermostatv1.NewThermostatClient(client)

	// Set a target above the current 19.2 °C, then watch the device
	// approach it.
	if _, err := thermostat.SetTarget(ctx, &thermostatv1.SetTargetRequest{Celsius: 19.4}, rpc.To("dev-1")); err != nil {
		panic(err)
	}
	stream, err := thermostat.WatchReadings(ctx, &thermostatv1.WatchReadingsRequest{Count: 4, IntervalMs: 10}, rpc.To("dev-1"))
	if err != nil {
		panic(err)
	}
	for reading, err := range rpc.Messages(stream) {
		if err != nil {
			fmt.Println("stream failed:", err)
			return
		}
		fmt.Printf("%s %.1f °C (target %.1f °C)\n", reading.GetDeviceId(), reading.GetCelsius(), reading.GetTargetCelsius())
	}
	fmt.Println("done")
	// Output:
	// dev-1 19.2 °C (target 19.4 °C)
	// dev-1 19.3 °C (target 19.4 °C)
	// dev-1 19.4 °C (target 19.4 °C)
	// dev-1 19.4 °C (target 19.4 °C)
	// done
}
