// Command caller sets a thermostat's target and reads it back.
//
//	go run ./examples/thermostat/caller -broker mqtt://127.0.0.1:1883 -target dev-7 -celsius 21
//
// On a broker that requires a login, set MQTTRPC_USERNAME and
// MQTTRPC_PASSWORD (or put the user in the URL, mqtt://alice@host, and the
// password in MQTTRPC_PASSWORD).
//
// On failure it prints the status code's name and message and exits 1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/mqttrpc/mqttrpc/codec"
	"github.com/mqttrpc/mqttrpc/examples/internal/exampleconn"
	"github.com/mqttrpc/mqttrpc/examples/thermostat/thermostatv1"
	"github.com/mqttrpc/mqttrpc/rpc"
)

func main() {
	brokerURL := flag.String("broker", "mqtt://127.0.0.1:1883", "broker URL; a login comes from $MQTTRPC_USERNAME and $MQTTRPC_PASSWORD, or mqtt://user@host and $MQTTRPC_PASSWORD")
	target := flag.String("target", "dev-7", "device ID to call")
	celsius := flag.Float64("celsius", 21, "target temperature to set")
	useJSON := flag.Bool("json", false, "send JSON instead of protobuf")
	timeout := flag.Duration("timeout", 5*time.Second, "deadline of each call")
	flag.Parse()
	if err := run(*brokerURL, *target, *celsius, *useJSON, *timeout); err != nil {
		var rpcErr *rpc.Error
		if errors.As(err, &rpcErr) {
			fmt.Fprintf(os.Stderr, "caller: %s: %s\n", rpcErr.Code(), rpcErr.Message())
		} else {
			fmt.Fprintln(os.Stderr, "caller:", err)
		}
		os.Exit(1)
	}
}

func run(brokerURL, target string, celsius float64, useJSON bool, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	conn, err := rpc.Dial(ctx, brokerURL, exampleconn.Options(brokerURL, exampleconn.ClientID("thermostat-caller"))...)
	cancel()
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	client := rpc.NewClient(conn)
	defer client.Close(context.Background())

	opts := []rpc.CallOption{rpc.To(target)}
	if useJSON {
		opts = append(opts, rpc.WithCodec(codec.JSON))
	}
	thermostat := thermostatv1.NewThermostatClient(client, opts...)

	ctx, cancel = context.WithTimeout(context.Background(), timeout)
	defer cancel()
	set, err := thermostat.SetTarget(ctx, &thermostatv1.SetTargetRequest{Celsius: celsius})
	if err != nil {
		return err
	}
	fmt.Printf("SetTarget(%s, %.1f °C): previous target %.1f °C\n", target, celsius, set.GetPreviousCelsius())

	ctx, cancel = context.WithTimeout(context.Background(), timeout)
	defer cancel()
	r, err := thermostat.GetReading(ctx, &thermostatv1.GetReadingRequest{})
	if err != nil {
		return err
	}
	fmt.Printf("GetReading(%s): %.1f °C, humidity %.1f %%, target %.1f °C\n", r.GetDeviceId(), r.GetCelsius(), r.GetHumidity(), r.GetTargetCelsius())
	return nil
}
