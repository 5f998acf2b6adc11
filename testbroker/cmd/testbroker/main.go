// Command testbroker runs the embedded MQTT 5 test broker on its own, until
// SIGINT or SIGTERM:
//
//	go run ./testbroker/cmd/testbroker -addr 127.0.0.1:1883 -v
//
// It prints the broker's URL on standard output; -v logs connections and
// every packet (type, client, topic, properties; never payloads) to standard
// error.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/mqttrpc/mqttrpc/testbroker"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:1883", "TCP address to listen on")
	verbose := flag.Bool("v", false, "log connections and packets to standard error")
	flag.Parse()

	opts := []testbroker.Option{testbroker.WithAddr(*addr)}
	if *verbose {
		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
		opts = append(opts, testbroker.WithLogger(log), testbroker.WithPacketLog(log))
	}
	broker, err := testbroker.New(opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(broker.URL())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	<-ctx.Done()
	stop()
	if err := broker.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
