// Command mqttrpc calls mqttrpc services from a shell, as grpcurl does for
// gRPC: it describes services and calls their methods with JSON, printing
// the answers as JSON. The schema comes by reflection over MQTT (the
// servers announce it; docs/protocol.md, "Reflection"), or from .proto
// files or a protoset.
//
//	mqttrpc [global flags] list [SERVICE]
//	mqttrpc [global flags] describe SERVICE[/METHOD]
//	mqttrpc [global flags] call [-t TARGET | --any] [-d JSON|@FILE|@-] [-H key=value]... [--timeout D] [--qos N] SERVICE/METHOD
//	mqttrpc [global flags] broadcast [-d JSON] [--timeout D] SERVICE/METHOD
//	mqttrpc [global flags] watch [SERVICE]
//	mqttrpc [global flags] health [-t TARGET] [SERVICE]
//	mqttrpc [global flags] stats [-t TARGET] [SERVICE]
//
// Global flags: --broker URL (env MQTTRPC_BROKER, default
// mqtt://127.0.0.1:1883), --username, --password (env MQTTRPC_PASSWORD),
// --cacert, --cert, --key, --client-id (random by default), and the schema
// if not by reflection: --proto FILE with -I DIR, or --protoset FILE.
// -o text prints protobuf text instead of JSON.
//
// The exit status is 0 when the call succeeded, 64 plus the status code
// when it failed with an RPC error (grpcurl's convention: 68 for
// DeadlineExceeded, 76 for Unimplemented, 78 for Unavailable), 1 for a
// usage or connection error, and 130 when Ctrl-C cancelled the call.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"

	"github.com/mqttrpc/mqttrpc/rpc"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit statuses besides 64 + code.
const (
	exitOK          = 0
	exitUsage       = 1 // usage, schema and connection errors
	exitRPC         = 64
	exitInterrupted = 130 // Ctrl-C during a call: 128 + SIGINT, as shells report it
)

// flagError is a command's flags that did not parse: the flag package has
// said why and shown the usage already.
type flagError struct{ help bool }

func (e flagError) Error() string {
	if e.help {
		return "help requested"
	}
	return "bad flags"
}

// usageError is a mistake in the command line: its message says what to do.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// app is one run of the command: its global flags and streams.
type app struct {
	globals   globalFlags
	outputSet bool // -o was given (stats prints a table unless -o json)
	stdin     io.Reader
	stdout    io.Writer
	stderr    io.Writer

	// The run's connection and fleet view, made once when a command or
	// the schema by reflection first needs them; the command closes them.
	conn  *rpc.Conn
	fleet *rpc.Fleet
}

const usageText = `usage: mqttrpc [global flags] COMMAND [flags] ARGS

commands:
  list [SERVICE]              the online servers (of SERVICE) and what they serve, from their presence records
  describe [SERVICE[/METHOD]]  print a service or method (or message) from the schema (by reflection, or --proto)
  call SERVICE/METHOD         call a method: -t TARGET or --any, -d JSON|@FILE|@-, -H key=value, --timeout D, --qos N
  broadcast SERVICE/METHOD    call every server; one JSON line per answer, then who did not answer
  watch [SERVICE]             servers going online and offline, health changes, live (Ctrl-C ends)
  health [-t TARGET] [SERVICE]  health as grpc.health.v1 Check answers; exits 0 when SERVING
  stats [-t TARGET] [SERVICE]   per-method stats, a table; of every online server without -t

global flags:
`

// run runs the command line args and returns the exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	fs := flag.NewFlagSet("mqttrpc", flag.ContinueOnError)
	fs.SetOutput(stderr)
	a.globals.register(fs)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	fs.Visit(func(f *flag.Flag) { a.outputSet = a.outputSet || f.Name == "o" })
	if fs.NArg() == 0 {
		fs.Usage()
		return exitUsage
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	var err error
	switch cmd {
	case "describe":
		err = a.describe(ctx, rest)
	case "call":
		err = a.call(ctx, rest)
	case "broadcast":
		err = a.broadcast(ctx, rest)
	case "list":
		err = a.list(ctx, rest)
	case "watch":
		err = a.watch(ctx, rest)
	case "health":
		err = a.health(ctx, rest)
	case "stats":
		err = a.stats(ctx, rest)
	case "help":
		fs.Usage()
		return exitOK
	default:
		fmt.Fprintf(stderr, "mqttrpc: unknown command %q; the commands are list, describe, call, broadcast, watch, health and stats (mqttrpc help)\n", cmd)
		return exitUsage
	}
	if err != nil && ctx.Err() != nil {
		// Ctrl-C: the call was cancelled on the wire.
		fmt.Fprintln(stderr, "mqttrpc: interrupted; the call was cancelled")
		return exitInterrupted
	}
	return a.exit(err)
}

// exit reports err on stderr and returns the exit status it means.
func (a *app) exit(err error) int {
	if err == nil {
		return exitOK
	}
	var fe flagError
	if errors.As(err, &fe) {
		if fe.help {
			return exitOK
		}
		return exitUsage
	}
	var rpcErr *rpcFailure
	if errors.As(err, &rpcErr) {
		if !rpcErr.quiet {
			a.printRPCError(rpcErr.err)
		}
		return exitRPC + int(rpcErr.err.Code())
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "mqttrpc: ") {
		msg = "mqttrpc: " + msg
	}
	fmt.Fprintln(a.stderr, msg)
	return exitUsage
}
