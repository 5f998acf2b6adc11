package main

import (
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestFleetTranscript(t *testing.T) {
	defer goleak.VerifyNone(t)
	var out strings.Builder
	if err := run("", &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"online   dev-1  model t-1000  firmware 4.0.0  SERVING",
		"online   dev-3  model t-1000  firmware 4.2.0  SERVING",
		"broadcast GetReading: 3 answers, ended before its 10 s deadline: true",
		"offline  dev-2",
		"GetReading dev-2 -> Unavailable at once: true",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("transcript lacks %q:\n%s", want, out.String())
		}
	}
}
