// Command device runs one simulated thermostat that serves the Thermostat
// service on a broker until SIGINT or SIGTERM, then shuts down gracefully.
//
//	go run ./examples/thermostat/device -broker mqtt://127.0.0.1:1883 -id dev-7
//
// On a broker that requires a login, set MQTTRPC_USERNAME and
// MQTTRPC_PASSWORD (or put the user in the URL, mqtt://alice@host, and the
// password in MQTTRPC_PASSWORD).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mqttrpc/mqttrpc/examples/internal/exampleconn"
	"github.com/mqttrpc/mqttrpc/examples/thermostat/internal/device"
	"github.com/mqttrpc/mqttrpc/rpc"
)

func main() {
	brokerURL := flag.String("broker", "mqtt://127.0.0.1:1883", "broker URL; a login comes from $MQTTRPC_USERNAME and $MQTTRPC_PASSWORD, or mqtt://user@host and $MQTTRPC_PASSWORD")
	id := flag.String("id", "dev-7", "device ID: the {target} callers address (the MQTT client ID is this ID and a random suffix)")
	verbose := flag.Bool("v", false, "log dropped and rejected requests")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var opts []rpc.ServerOption
	if *verbose {
		opts = append(opts, rpc.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))))
	}
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	srv, conn, err := device.Serve(startCtx, *brokerURL, *id, opts...)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "device:", err)
		os.Exit(1)
	}
	fmt.Printf("device %s serving on %s; Ctrl-C to stop\n", *id, exampleconn.Redacted(*brokerURL))
	<-ctx.Done()

	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = srv.Shutdown(shutdownCtx)
	if cerr := conn.Close(shutdownCtx); err == nil {
		err = cerr
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "device: shutdown:", err)
		os.Exit(1)
	}
	fmt.Printf("device %s stopped\n", *id)
}
