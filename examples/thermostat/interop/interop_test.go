package interop_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqttrpc/mqttrpc/examples/thermostat/internal/device"
	"github.com/mqttrpc/mqttrpc/internal/mosquittotest"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

const (
	// requireEnv set to 1 turns a missing foreign client into a failure.
	requireEnv = "MQTTRPC_REQUIRE_INTEROP"

	aptInstall = "apt-get install -y mosquitto-clients python3-paho-mqtt"
	npmInstall = "npm ci --prefix examples/thermostat/interop"

	service = "example.thermostat.v1.Thermostat"

	// hangGuard bounds one foreign process; every client also has its own
	// 5 s timeout for the answer, so this only catches a hung process.
	hangGuard = time.Minute
)

// answer is a response as the foreign clients report it: the one JSON line
// call.py and call.mjs print, or what the test reads from mosquitto_rr.
type answer struct {
	Status  int             `json:"status"`
	Message string          `json:"message"`
	Target  string          `json:"target"`
	Payload json.RawMessage `json:"payload"` // the response message, or null
}

// foreignClient is one non-Go MQTT client calling the device.
type foreignClient struct {
	name string
	// find returns the command that runs the client, or why it cannot run
	// (with the command that installs it).
	find func() (argv []string, missing string)
	// call runs one call and returns the answer, failing t if the client
	// broke its own contract (exit code, output).
	call func(t *testing.T, argv []string, addr, target, method, body string) answer
	// noServer lists what the client may report when it calls a target
	// nobody serves on the named broker; nil: the test does not try it.
	noServer func(broker string) []outcome
}

// outcome is how a call to a target nobody serves ends.
type outcome string

const (
	timedOut    outcome = "exit 2 after the timeout"
	unavailable outcome = "exit 1 with status 14 (Unavailable) at once"
)

// clients are the foreign clients the acceptance criterion names.
var clients = []foreignClient{
	{name: "mosquitto_rr", find: findMosquittoRR, call: callMosquittoRR},
	{
		name: "python-paho", find: findPython, call: callScript,
		noServer: func(broker string) []outcome {
			if broker == "mosquitto" {
				// PUBACK 0x10 reaches on_publish in paho-mqtt 2.x only: 1.x
				// waits out its timeout.
				return []outcome{unavailable, timedOut}
			}
			return []outcome{timedOut}
		},
	},
	{
		name: "mqttjs", find: findNode, call: callScript,
		noServer: func(broker string) []outcome {
			if broker == "mosquitto" {
				// Mosquitto answers PUBACK 0x10 "no matching subscribers",
				// which call.mjs reports at once; mochi does not.
				return []outcome{unavailable}
			}
			return []outcome{timedOut}
		},
	},
}

// brokers are the brokers each client is tried on.
var brokers = []struct {
	name  string
	start func(t *testing.T) (addr string)
}{
	{"mosquitto", func(t *testing.T) string {
		// Stock TCP_NODELAY setting, as users run it.
		return mosquittotest.Start(t, mosquittotest.WithNoDelay(false)).Addr()
	}},
	{"testbroker", func(t *testing.T) string {
		return testbroker.Start(t).Addr()
	}},
}

// TestJSONFromForeignClients calls a thermostat device with JSON from
// mosquitto_rr, Python paho-mqtt and mqtt.js, on Mosquitto and on testbroker.
func TestJSONFromForeignClients(t *testing.T) {
	for _, b := range brokers {
		t.Run(b.name, func(t *testing.T) {
			addr := b.start(t)
			for _, c := range clients {
				t.Run(c.name, func(t *testing.T) {
					argv, missing := c.find()
					if missing != "" {
						skipOrFail(t, missing)
					}
					// A fresh device per client: its target starts at 20 °C.
					// Each has its own ID: a device that reconnects with the
					// ID of one that has just left may lose its
					// subscriptions on mochi (the old session's cleanup is
					// keyed by client ID).
					deviceID := "dev-7-" + c.name
					startDevice(t, "mqtt://"+addr, deviceID)

					got := c.call(t, argv, addr, deviceID, "SetTarget", `{"celsius": 22}`)
					wantOK(t, "SetTarget 22", got)
					if p := payload(t, got); !reflect.DeepEqual(p, map[string]any{"previousCelsius": 20.0}) {
						t.Errorf("SetTarget 22: payload %v, want {previousCelsius: 20}", p)
					}

					got = c.call(t, argv, addr, deviceID, "GetReading", `{}`)
					wantOK(t, "GetReading", got)
					p := payload(t, got)
					if p["deviceId"] != deviceID || p["targetCelsius"] != 22.0 {
						t.Errorf("GetReading: payload %v, want deviceId %s and targetCelsius 22", p, deviceID)
					}
					for _, key := range []string{"celsius", "humidity"} {
						if _, ok := p[key].(float64); !ok {
							t.Errorf("GetReading: payload %v has no number %q", p, key)
						}
					}

					got = c.call(t, argv, addr, deviceID, "SetTarget", `{"celsius": 99}`)
					if got.Status != 3 || !strings.Contains(got.Message, "outside [5, 35]") || got.Target != "" {
						t.Errorf("SetTarget 99: got %+v, want status 3 (InvalidArgument), a message about [5, 35] and no mqttrpc-target", got)
					}
					if len(got.Payload) != 0 && string(got.Payload) != "null" {
						t.Errorf("SetTarget 99: payload %s, want none", got.Payload)
					}

					if c.noServer != nil {
						checkNoServer(t, argv, addr, c.noServer(b.name))
					}
				})
			}
		})
	}
}

// checkNoServer calls a target nobody serves, with a 1 s timeout.
func checkNoServer(t *testing.T, argv []string, addr string, want []outcome) {
	t.Helper()
	host, port := splitAddr(t, addr)
	out, code, stderr := run(t, slices.Concat(argv, []string{"--timeout", "1", host, port, "dev-nobody", "GetReading"}))
	var got outcome
	switch code {
	case 2:
		got = timedOut
		if !strings.Contains(stderr, "no answer") {
			t.Errorf("no server: exit 2 with stderr %q, want it to say \"no answer\"", stderr)
		}
	case 1:
		got = unavailable
		if a := decodeAnswer(t, out, stderr); a.Status != 14 || !strings.Contains(a.Message, "no matching subscribers") {
			t.Errorf("no server: got %+v, want status 14 (Unavailable) for no matching subscribers", a)
		}
	}
	if !slices.Contains(want, got) {
		t.Errorf("no server: exit %d, want %v\nstdout: %s\nstderr: %s", code, want, out, stderr)
	}
}

// startDevice serves the thermostat as deviceID on url until the test ends.
func startDevice(t *testing.T, url, deviceID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	srv, conn, err := device.Serve(ctx, url, deviceID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("device shutdown: %v", err)
		}
		if err := conn.Close(ctx); err != nil {
			t.Errorf("device close: %v", err)
		}
	})
}

func skipOrFail(t *testing.T, missing string) {
	t.Helper()
	if os.Getenv(requireEnv) == "1" {
		t.Fatalf("%s, and %s=1", missing, requireEnv)
	}
	t.Skipf("%s; set %s=1 to fail instead", missing, requireEnv)
}

func wantOK(t *testing.T, what string, got answer) {
	t.Helper()
	// A unicast answer has no mqttrpc-target: the caller named the target.
	if got.Status != 0 || got.Target != "" {
		t.Errorf("%s: got %+v, want status 0 and no mqttrpc-target", what, got)
	}
}

// payload decodes a JSON object payload (protojson: compare values, never bytes).
func payload(t *testing.T, a answer) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(a.Payload, &m); err != nil || m == nil {
		t.Fatalf("payload %q is not a JSON object: %v", a.Payload, err)
	}
	return m
}

// --- mosquitto_rr ---

var findMosquittoRR = sync.OnceValues(func() ([]string, string) {
	path, err := exec.LookPath("mosquitto_rr")
	if err != nil {
		return nil, "mosquitto_rr not on PATH (" + aptInstall + ")"
	}
	return []string{path}, ""
})

// callMosquittoRR runs mosquitto_rr as docs/protocol.md shows it, with -F %j
// so that the response's properties are printed too. mosquitto_rr sends no
// CorrelationData, MessageExpiryInterval or mqttrpc-timeout; the server
// answers all the same, with its default deadline. Every call uses the same
// client ID, as a user repeating the documented command does: requests then
// share their ResponseTopic and lack CorrelationData, so a server that keyed
// duplicates on those two alone would answer a later call with an earlier
// call's cached response.
func callMosquittoRR(t *testing.T, argv []string, addr, target, method, body string) answer {
	t.Helper()
	host, port := splitAddr(t, addr)
	const id = "shell-1"
	args := slices.Concat(argv, []string{
		"-V", "mqttv5", "-h", host, "-p", port, "-i", id,
		"-t", "mqttrpc/" + service + "/" + target + "/" + method,
		"-e", "mqttrpc/responses/" + id,
		"-D", "publish", "content-type", "application/json",
		"-m", body, "-W", "5", "-F", "%j",
	})
	if method == "GetReading" {
		args = append(args, "-q", "1") // QoS 1 both ways, as mqttrpc's own clients call
	}
	out, code, stderr := run(t, args)
	if code != 0 {
		t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, stderr)
	}
	var msg struct {
		Topic      string `json:"topic"`
		Properties struct {
			ContentType    string          `json:"content-type"`
			UserProperties json.RawMessage `json:"user-properties"`
		} `json:"properties"`
		Payload json.RawMessage `json:"payload"`
	}
	line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	if err := json.Unmarshal([]byte(line), &msg); err != nil {
		t.Fatalf("mosquitto_rr -F %%j printed %q: %v\nstderr: %s", out, err, stderr)
	}
	if msg.Topic != "mqttrpc/responses/"+id {
		t.Errorf("response on topic %q, want mqttrpc/responses/%s", msg.Topic, id)
	}
	if msg.Properties.ContentType != "application/json" {
		t.Errorf("response content-type %q, want application/json", msg.Properties.ContentType)
	}
	user := userProperties(t, msg.Properties.UserProperties)
	status := 0 // an OK answer carries no mqttrpc-status
	if s, ok := user["mqttrpc-status"]; ok {
		var err error
		if status, err = strconv.Atoi(s); err != nil {
			t.Fatalf("response with a malformed mqttrpc-status: %s", line)
		}
	}
	return answer{
		Status:  status,
		Message: user["mqttrpc-message"],
		Target:  user["mqttrpc-target"],
		Payload: rrPayload(t, msg.Payload),
	}
}

// userProperties reads mosquitto_rr's "user-properties": an object in
// Mosquitto 2.0 (a repeated key is printed twice: the last one wins here),
// or a list of one-key objects; absent when the answer has none.
func userProperties(t *testing.T, raw json.RawMessage) map[string]string {
	t.Helper()
	if len(raw) == 0 || string(raw) == "null" {
		return map[string]string{} // none: an OK answer may carry none
	}
	var m map[string]string
	if err := json.Unmarshal(raw, &m); err == nil {
		return m
	}
	var list []map[string]string
	if err := json.Unmarshal(raw, &list); err != nil {
		t.Fatalf("user-properties %s: neither an object nor a list of objects", raw)
	}
	m = make(map[string]string)
	for _, kv := range list {
		for k, v := range kv {
			m[k] = v
		}
	}
	return m
}

// rrPayload turns -F %j's "payload" (a JSON string, null when empty, or the
// JSON itself in some versions) into the payload bytes.
func rrPayload(t *testing.T, raw json.RawMessage) json.RawMessage {
	t.Helper()
	switch {
	case len(raw) == 0 || string(raw) == "null":
		return nil
	case raw[0] == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatalf("payload %s: %v", raw, err)
		}
		return json.RawMessage(s)
	default:
		return raw
	}
}

// --- call.py and call.mjs ---

var findPython = sync.OnceValues(func() ([]string, string) {
	// Debian's python3-paho-mqtt lives with /usr/bin/python3, which need not
	// be the python3 first on PATH (pyenv, venvs).
	candidates := []string{"/usr/bin/python3"}
	if path, err := exec.LookPath("python3"); err == nil && path != candidates[0] {
		candidates = append(candidates, path)
	}
	for _, py := range candidates {
		ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
		err := exec.CommandContext(ctx, py, "-c", "import paho.mqtt.client").Run()
		cancel()
		if err == nil {
			return []string{py, "call.py"}, ""
		}
	}
	return nil, "no python3 with paho-mqtt in " + strings.Join(candidates, ", ") + " (" + aptInstall + ")"
})

var findNode = sync.OnceValues(func() ([]string, string) {
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, "node not on PATH (apt-get install -y nodejs npm, then " + npmInstall + ")"
	}
	if _, err := os.Stat("node_modules/mqtt/package.json"); err != nil {
		return nil, "mqtt.js not installed in examples/thermostat/interop/node_modules (" + npmInstall + ")"
	}
	return []string{node, "call.mjs"}, ""
})

// callScript runs call.py or call.mjs, which share their command line and
// output: one JSON answer line, exit 0 on status 0, 1 on another status.
func callScript(t *testing.T, argv []string, addr, target, method, body string) answer {
	t.Helper()
	host, port := splitAddr(t, addr)
	args := slices.Concat(argv, []string{host, port, target, method, body})
	out, code, stderr := run(t, args)
	if code != 0 && code != 1 {
		t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, stderr)
	}
	got := decodeAnswer(t, out, stderr)
	if want := map[bool]int{true: 0, false: 1}[got.Status == 0]; code != want {
		t.Errorf("%s: exit %d with status %d, want exit %d", strings.Join(args, " "), code, got.Status, want)
	}
	return got
}

func decodeAnswer(t *testing.T, out, stderr string) answer {
	t.Helper()
	var a answer
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil || dec.More() {
		t.Fatalf("want one JSON answer line, got %q (%v)\nstderr: %s", out, err, stderr)
	}
	return a
}

// --- processes ---

// run runs argv with a hang guard and returns its output and exit code. It
// fails t if the process could not run or was killed.
func run(t *testing.T, argv []string) (stdout string, code int, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), hangGuard)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = 5 * time.Second
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && exit.Exited():
		code = exit.ExitCode()
	default:
		t.Fatalf("%s: %v\nstdout: %s\nstderr: %s", strings.Join(argv, " "), err, &out, &errOut)
	}
	return out.String(), code, errOut.String()
}

func splitAddr(t *testing.T, addr string) (host, port string) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return host, port
}
