package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mqttrpc/mqttrpc/examples/thermostat/internal/device"
	"github.com/mqttrpc/mqttrpc/internal/rpctest"
)

var update = flag.Bool("update", false, "rewrite testdata/cli.golden")

// The mqttrpc command line, built from this checkout, against two of the
// example's devices on Mosquitto, with the schema by reflection (no
// .proto files): the README's commands and their outputs, exit statuses
// included, compared with testdata/cli.golden (go test -update rewrites it).
func TestCommandLineTranscript(t *testing.T) {
	b := rpctest.NewMosquitto(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, id := range []string{"dev-7", "dev-8"} {
		srv, conn, err := device.Serve(ctx, b.URL, id)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = srv.Shutdown(context.Background())
			_ = conn.Close(context.Background())
		})
	}
	cli := filepath.Join(t.TempDir(), "mqttrpc")
	build := exec.CommandContext(ctx, "go", "build", "-o", cli, "github.com/mqttrpc/mqttrpc/cmd/mqttrpc")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/mqttrpc: %v\n%s", err, out)
	}

	var transcript bytes.Buffer
	for _, args := range [][]string{
		{"describe", "example.thermostat.v1.Thermostat"},
		{"describe", "example.thermostat.v1.SetTargetRequest"},
		{"call", "-t", "dev-7", "-d", `{"celsius": 22}`, "example.thermostat.v1.Thermostat/SetTarget"},
		{"call", "-t", "dev-7", "-d", `{"celsius": 99}`, "example.thermostat.v1.Thermostat/SetTarget"},
		{"call", "-t", "dev-7", "-d", `{"count": 2}`, "example.thermostat.v1.Thermostat/WatchReadings"},
		{"call", "-t", "dev-9", "example.thermostat.v1.Thermostat/GetReading"},
		{"health", "-t", "dev-8"},
	} {
		cmd := exec.CommandContext(ctx, cli, args...)
		cmd.Env = append(os.Environ(), "MQTTRPC_BROKER="+b.URL)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&transcript, "$ mqttrpc %s\n%s%s[exit %d]\n", quote(args), stdout.String(), stderr.String(), code)
	}

	// A broadcast's answers come in any order.
	cmd := exec.CommandContext(ctx, cli, "broadcast", "example.thermostat.v1.Thermostat/GetReading")
	cmd.Env = append(os.Environ(), "MQTTRPC_BROKER="+b.URL)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("broadcast: %v\n%s", err, stderr.String())
	}
	for _, want := range []string{`{"server":"dev-7","response":{"deviceId":"dev-7",`, `{"server":"dev-8","response":{"deviceId":"dev-8",`} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("broadcast: no %q in %q", want, stdout.String())
		}
	}
	if stderr.String() != "2 answers, every online server\n" {
		t.Errorf("broadcast: stderr %q", stderr.String())
	}

	golden := filepath.Join("testdata", "cli.golden")
	if *update {
		if err := os.WriteFile(golden, transcript.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got := transcript.String(); got != string(want) {
		t.Errorf("transcript differs from %s (go test -run TestCommandLineTranscript -update rewrites it):\n%s", golden, got)
	}
}

// quote writes args as a shell would need them.
func quote(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		if strings.ContainsAny(a, ` {}"`) {
			out[i] = "'" + a + "'"
		}
	}
	return strings.Join(out, " ")
}
