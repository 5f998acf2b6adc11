// Command thermostat is the mqttrpc quickstart: it starts an embedded MQTT 5
// broker (or uses -broker), three simulated thermostat devices, and a caller
// that reads them, sets a target and shows an error, through typed stubs
// generated from thermostatv1/thermostat.proto.
//
//	go run ./examples/thermostat
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mqttrpc/mqttrpc/examples/internal/exampleconn"
	"github.com/mqttrpc/mqttrpc/examples/thermostat/internal/device"
	"github.com/mqttrpc/mqttrpc/examples/thermostat/thermostatv1"
	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

func main() {
	brokerURL := flag.String("broker", "", "broker URL such as mqtt://127.0.0.1:1883 (default: start an embedded broker)")
	flag.Parse()
	if err := run(*brokerURL, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "thermostat:", err)
		os.Exit(1)
	}
}

func run(brokerURL string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	where := "given"
	if brokerURL == "" {
		broker, err := testbroker.New()
		if err != nil {
			return err
		}
		defer broker.Close()
		brokerURL, where = broker.URL(), "embedded"
	}
	fmt.Fprintf(out, "broker   %s (%s)\n", exampleconn.Redacted(brokerURL), where)

	devices := []string{"dev-1", "dev-2", "dev-3"}
	for _, id := range devices {
		srv, conn, err := device.Serve(ctx, brokerURL, id)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		defer srv.Shutdown(context.Background())
	}
	fmt.Fprintf(out, "devices  %v serve %s\n\n", devices, thermostatv1.ThermostatName)

	conn, err := rpc.Dial(ctx, brokerURL, exampleconn.Options(brokerURL, exampleconn.ClientID("thermostat-caller"))...)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	client := rpc.NewClient(conn)
	defer client.Close(context.Background())
	thermostat := thermostatv1.NewThermostatClient(client)

	for _, id := range devices {
		r, err := thermostat.GetReading(ctx, &thermostatv1.GetReadingRequest{}, rpc.To(id))
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "GetReading %-5s -> %.1f °C, humidity %.1f %%, target %.1f °C\n", id, r.GetCelsius(), r.GetHumidity(), r.GetTargetCelsius())
	}

	set, err := thermostat.SetTarget(ctx, &thermostatv1.SetTargetRequest{Celsius: 21.5}, rpc.To("dev-2"))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "SetTarget  dev-2 21.5 °C -> OK, previous target %.1f °C\n", set.GetPreviousCelsius())
	r, err := thermostat.GetReading(ctx, &thermostatv1.GetReadingRequest{}, rpc.To("dev-2"))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "GetReading dev-2 -> target now %.1f °C\n", r.GetTargetCelsius())

	_, err = thermostat.SetTarget(ctx, &thermostatv1.SetTargetRequest{Celsius: 80}, rpc.To("dev-3"))
	if rpc.CodeOf(err) != rpc.InvalidArgument {
		return fmt.Errorf("SetTarget(80): got %v, want InvalidArgument", err)
	}
	fmt.Fprintf(out, "SetTarget  dev-3 80 °C   -> %v\n", err)

	// A server stream: three readings of dev-1, 50 ms apart.
	watch, err := thermostat.WatchReadings(ctx, &thermostatv1.WatchReadingsRequest{Count: 3, IntervalMs: 50}, rpc.To("dev-1"))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "WatchReadings dev-1 ->")
	for r, err := range rpc.Messages(watch) {
		if err != nil {
			return err
		}
		fmt.Fprintf(out, " %.1f °C", r.GetCelsius())
	}
	fmt.Fprintln(out, ", then the stream ended OK")

	// Nobody serves dev-9: Mosquitto says so at once (Unavailable), brokers
	// that don't (like the embedded one) leave the call to its deadline.
	shortCtx, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancelShort()
	_, err = thermostat.GetReading(shortCtx, &thermostatv1.GetReadingRequest{}, rpc.To("dev-9"))
	fmt.Fprintf(out, "GetReading dev-9 (nobody serves it, 500 ms deadline) -> %v\n", rpc.CodeOf(err))
	return nil
}
