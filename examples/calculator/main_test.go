package main

import (
	"regexp"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestCallsSpreadAcrossInstances(t *testing.T) {
	defer goleak.VerifyNone(t)
	var out strings.Builder
	if err := run("", 30, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	text := out.String()
	if !strings.Contains(text, "Divide(1, 0) -> InvalidArgument: division by zero") {
		t.Errorf("no InvalidArgument for division by zero:\n%s", text)
	}
	instances := map[string]bool{}
	for _, m := range regexp.MustCompile(`answered by (calc-\d)`).FindAllStringSubmatch(text, -1) {
		instances[m[1]] = true
	}
	// With 30 calls the chance that a random pick uses one instance only is 3^-29.
	if len(instances) < 2 {
		t.Errorf("calls answered by %v, want at least 2 instances:\n%s", instances, text)
	}
}
