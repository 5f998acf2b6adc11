// Command fleet shows presence: three thermostat devices announce
// themselves, a caller lists the online ones with their labels, broadcasts
// GetReading to them (the broadcast ends when all three have answered, not
// at its deadline), and, once a device has shut down, sees it offline and
// has a call to it fail at once.
//
//	go run ./examples/thermostat/fleet [-broker mqtt://127.0.0.1:1883]
//
// Watch the records meanwhile: mosquitto_sub -v -t 'mqttrpc/_presence/#'
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
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(1)
	}
}

func run(brokerURL string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if brokerURL == "" {
		broker, err := testbroker.New()
		if err != nil {
			return err
		}
		defer broker.Close()
		brokerURL = broker.URL()
	}

	// Devices with labels; each Start publishes its presence record.
	stops := map[string]func(){}
	for i, id := range []string{"dev-1", "dev-2", "dev-3"} {
		firmware := fmt.Sprintf("4.%d.0", i)
		srv, conn, err := device.Serve(ctx, brokerURL, id, rpc.WithLabels(map[string]string{"model": "t-1000", "firmware": firmware}))
		if err != nil {
			return err
		}
		stops[id] = func() {
			_ = srv.Shutdown(context.Background())
			_ = conn.Close(context.Background())
		}
		defer stops[id]()
	}

	conn, err := rpc.Dial(ctx, brokerURL, exampleconn.Options(brokerURL, exampleconn.ClientID("fleet-caller"))...)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	fleet, err := rpc.WatchFleet(ctx, conn)
	if err != nil {
		return err
	}
	defer fleet.Close(context.Background())
	for _, s := range fleet.Servers(thermostatv1.ThermostatName) {
		fmt.Fprintf(out, "online   %s  model %s  firmware %s  %s\n", s.ID, s.Labels["model"], s.Labels["firmware"], s.Health)
	}

	client := rpc.NewClient(conn)
	defer client.Close(context.Background())
	thermostat := thermostatv1.NewThermostatClient(client)
	bctx, bcancel := context.WithTimeout(ctx, 10*time.Second)
	defer bcancel()
	start := time.Now()
	answers := 0
	for r := range thermostat.BroadcastGetReading(bctx, &thermostatv1.GetReadingRequest{}) {
		if r.Err != nil {
			fmt.Fprintf(out, "broadcast %s -> %v\n", r.ServerID, r.Err)
			continue
		}
		answers++
	}
	fmt.Fprintf(out, "broadcast GetReading: %d answers, ended before its 10 s deadline: %v\n", answers, time.Since(start) < 5*time.Second)

	stops["dev-2"]()
	stops["dev-2"] = func() {}
	for ev, err := range fleet.Watch(ctx) {
		if err != nil {
			return err
		}
		if ev.Kind == rpc.ServerOffline && ev.Server.ID == "dev-2" {
			fmt.Fprintf(out, "offline  dev-2\n")
			break
		}
	}
	start = time.Now()
	_, err = thermostat.GetReading(ctx, &thermostatv1.GetReadingRequest{}, rpc.To("dev-2"))
	fmt.Fprintf(out, "GetReading dev-2 -> %v at once: %v\n", rpc.CodeOf(err), time.Since(start) < time.Second)
	return nil
}
