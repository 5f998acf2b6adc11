package main

import (
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestQuickstartTranscript(t *testing.T) {
	defer goleak.VerifyNone(t)
	var out strings.Builder
	if err := run("", &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"(embedded)",
		"GetReading dev-1 -> ",
		"GetReading dev-3 -> ",
		"SetTarget  dev-2 21.5 °C -> OK, previous target 20.0 °C",
		"GetReading dev-2 -> target now 21.5 °C",
		"SetTarget  dev-3 80 °C   -> InvalidArgument: target 80.0 °C is outside [5, 35] °C",
		"WatchReadings dev-1 -> ",
		", then the stream ended OK",
		"-> DeadlineExceeded",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("transcript lacks %q:\n%s", want, out.String())
		}
	}
}
