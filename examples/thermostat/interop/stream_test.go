package interop_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// TestServerStreamFromPython consumes the device's WatchReadings server
// stream from Python paho-mqtt (watch.py), on Mosquitto and on testbroker:
// 20 readings in order with a window of 4, so the script grants credit
// four times over, then the final OK.
func TestServerStreamFromPython(t *testing.T) {
	for _, b := range brokers {
		t.Run(b.name, func(t *testing.T) {
			argv, missing := findPython()
			if missing != "" {
				skipOrFail(t, missing)
			}
			addr := b.start(t)
			deviceID := "dev-8-watch"
			startDevice(t, "mqtt://"+addr, deviceID)
			host, port := splitAddr(t, addr)
			args := []string{argv[0], "watch.py", host, port, deviceID, "WatchReadings", `{"count": 20, "intervalMs": 1}`, "--window", "4"}
			out, code, stderr := run(t, args)
			if code != 0 {
				t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, stderr)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 21 {
				t.Fatalf("got %d lines, want 20 readings and the status:\n%s", len(lines), out)
			}
			var seqs []int
			for _, line := range lines[:20] {
				var m struct {
					Seq     int            `json:"seq"`
					Payload map[string]any `json:"payload"`
				}
				if err := json.Unmarshal([]byte(line), &m); err != nil {
					t.Fatalf("line %q: %v", line, err)
				}
				if m.Payload["deviceId"] != deviceID {
					t.Errorf("reading %d: %v, want deviceId %s", m.Seq, m.Payload, deviceID)
				}
				seqs = append(seqs, m.Seq)
			}
			if want := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19}; !slices.Equal(seqs, want) {
				t.Errorf("sequence numbers %v, want 0…19", seqs)
			}
			var status struct {
				Status  int    `json:"status"`
				Message string `json:"message"`
			}
			if err := json.Unmarshal([]byte(lines[20]), &status); err != nil || status.Status != 0 {
				t.Errorf("final line %q: want status 0 (%v)", lines[20], err)
			}
		})
	}
}
