#!/usr/bin/env bash
# Wall time of one-shot `mqttrpc call`s against stock Mosquitto (Nagle's
# algorithm on, no set_tcp_nodelay): 20 runs, one after another, each a new
# process that connects, calls GetReading on the thermostat example's device
# and disconnects; each run once with the schema from the .proto file and
# once by reflection over MQTT. Prints each run's time, then the medians (p50).
#
#   bench/cli-call.sh [runs]
#
# Needs mosquitto on PATH; builds the CLI and the device from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
go build -o "$dir/mqttrpc" ./cmd/mqttrpc
go build -o "$dir/device" ./examples/thermostat/device
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$dir/mosquitto.conf"
mosquitto -c "$dir/mosquitto.conf" > "$dir/mosquitto.log" 2>&1 &
broker="mqtt://127.0.0.1:$port"
# Start the device (again, if the broker was not listening yet) and wait
# until it says it serves.
for _ in $(seq 50); do
  : > "$dir/device.log"
  "$dir/device" -broker "$broker" -id bench-dev > "$dir/device.log" 2>&1 & dev=$!
  for _ in $(seq 100); do
    grep -q serving "$dir/device.log" && break
    kill -0 $dev 2>/dev/null || break
    sleep 0.1
  done
  grep -q serving "$dir/device.log" && break
  kill $dev 2>/dev/null || true
  wait $dev 2>/dev/null || true
done
grep -q serving "$dir/device.log" || { echo "the device did not start:"; cat "$dir/device.log"; exit 1; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(mosquitto -h 2>&1 | head -1)"
# Alternating: the schema from the .proto file, then by reflection over
# MQTT (the device's retained schema, found through its presence record).
proto_times=(); refl_times=()
for i in $(seq "$runs"); do
  for mode in proto reflection; do
    schema=(--proto examples/thermostat/thermostatv1/thermostat.proto)
    [ "$mode" = reflection ] && schema=()
    start=$(date +%s%N)
    "$dir/mqttrpc" --broker "$broker" "${schema[@]}" \
      call -t bench-dev example.thermostat.v1.Thermostat/GetReading > /dev/null
    end=$(date +%s%N)
    us=$(( (end - start) / 1000 ))
    if [ "$mode" = proto ]; then proto_times+=("$us"); else refl_times+=("$us"); fi
    printf 'run %d %-10s %d.%03d ms\n' "$i" "$mode" $((us / 1000)) $((us % 1000))
  done
done
p50() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for mode in proto reflection; do
  if [ "$mode" = proto ]; then p=$(p50 "${proto_times[@]}"); else p=$(p50 "${refl_times[@]}"); fi
  printf 'p50 of %d runs, schema by %s: %d.%03d ms\n' "$runs" "$mode" $((p / 1000)) $((p % 1000))
done
