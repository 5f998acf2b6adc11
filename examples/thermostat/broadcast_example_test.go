package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/mqttrpc/mqttrpc/examples/thermostat/internal/device"
	"github.com/mqttrpc/mqttrpc/examples/thermostat/thermostatv1"
	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// A broadcast through the generated client: every thermostat answers
// GetReading with a typed *thermostatv1.Reading. The caller watches the
// fleet, so the loop ends as soon as the three online devices have
// answered, not at the deadline; a device that did not answer would come
// as a reply with its ID and an error.
func Example_broadcastGetReading() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	broker, err := testbroker.New()
	if err != nil {
		panic(err)
	}
	defer broker.Close()
	for _, id := range []string{"dev-1", "dev-2", "dev-3"} {
		srv, conn, err := device.Serve(ctx, broker.URL(), id)
		if err != nil {
			panic(err)
		}
		defer conn.Close(context.Background())
		defer srv.Shutdown(context.Background())
	}

	conn, err := rpc.Dial(ctx, broker.URL())
	if err != nil {
		panic(err)
	}
	defer conn.Close(context.Background())
	fleet, err := rpc.WatchFleet(ctx, conn) // whom a broadcast should hear from
	if err != nil {
		panic(err)
	}
	defer fleet.Close(context.Background())
	client := rpc.NewClient(conn)
	defer client.Close(context.Background())
	thermostat := thermostatv1.NewThermostatClient(client)

	start := time.Now()
	var lines []string
	for r := range thermostat.BroadcastGetReading(ctx, &thermostatv1.GetReadingRequest{}) {
		if r.Err != nil {
			lines = append(lines, fmt.Sprintf("%s: %v", r.ServerID, r.Err))
			continue
		}
		lines = append(lines, fmt.Sprintf("%s: %.1f °C", r.ServerID, r.Response.GetCelsius()))
	}
	slices.Sort(lines) // replies come in the order the devices answer
	for _, line := range lines {
		fmt.Println(line)
	}
	fmt.Println("ended before the deadline:", time.Since(start) < 5*time.Second)
	// Output:
	// dev-1: 19.2 °C
	// dev-2: 22.3 °C
	// dev-3: 20.4 °C
	// ended before the deadline: true
}
