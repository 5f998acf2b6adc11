package main

import (
	"os"
	"runtime/debug"
	"strings"
)

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// moduleVersions lists the versions of the measured libraries.
func moduleVersions() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	want := map[string]bool{
		"github.com/eclipse/paho.golang":    true,
		"github.com/mochi-mqtt/server/v2":   true,
		"github.com/nats-io/nats-server/v2": true,
		"github.com/nats-io/nats.go":        true,
		"google.golang.org/grpc":            true,
		"google.golang.org/protobuf":        true,
	}
	var out []string
	for _, d := range info.Deps {
		if want[d.Path] {
			out = append(out, d.Path+" "+d.Version)
		}
	}
	return strings.Join(out, ", ")
}
