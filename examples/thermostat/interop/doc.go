// Package interop shows that the thermostat device
// (examples/thermostat/device) answers JSON calls from three foreign MQTT 5
// clients that follow docs/protocol.md: Mosquitto's mosquitto_rr, Python
// paho-mqtt (call.py) and mqtt.js (call.mjs). It holds only a test, which
// starts a broker (a real Mosquitto with its stock set_tcp_nodelay, then the
// embedded testbroker), serves device dev-7 on it and runs each client as a
// subprocess: a target set, a reading that reflects it, an out-of-range
// target answered InvalidArgument (3), and, for the scripts, a target nobody
// serves. watch.py consumes the WatchReadings server stream from Python
// paho-mqtt, ordering by sequence number and granting credit; the test runs
// it on both brokers.
//
// Install the clients, then run the test from the repository root:
//
//	apt-get install -y mosquitto mosquitto-clients python3-paho-mqtt
//	npm ci --prefix examples/thermostat/interop
//	MQTTRPC_REQUIRE_INTEROP=1 go test ./examples/thermostat/interop/
//
// A client that is not installed skips its subtest with the command that
// installs it, unless MQTTRPC_REQUIRE_INTEROP=1, which fails it instead
// (Mosquitto itself follows MQTTRPC_REQUIRE_MOSQUITTO). README.md in this
// directory shows the same calls by hand against a running device.
package interop
