#!/usr/bin/env python3
"""Consume an mqttrpc server stream with JSON from Python paho-mqtt (1.6 or 2.x).

    python3 watch.py 127.0.0.1 1883 dev-7 WatchReadings '{"count": 5}' --window 4

prints one JSON line per message, in order,

    {"seq":0,"payload":{"deviceId":"dev-7","celsius":19.2,...}}

then one line with the stream's status

    {"status":0,"message":""}

and exits 0 when the status is 0 (OK), 1 on any other status, 2 when the
stream did not end (timeout, or the broker could not be reached). It
follows docs/protocol.md, "Streams": one open with mqttrpc-window, messages
put in order by mqttrpc-seq (copies dropped), credit granted in steps of
half the window, and the final message's mqttrpc-status.
"""

import argparse
import json
import math
import os
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main():
    parser = argparse.ArgumentParser(description="Consume an mqttrpc server stream with JSON.")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("target", help="server ID, e.g. dev-7")
    parser.add_argument("method", help="method name, e.g. WatchReadings")
    parser.add_argument("body", nargs="?", default="{}", help="request message as JSON")
    parser.add_argument("--service", default="example.thermostat.v1.Thermostat",
                        help="full protobuf service name")
    parser.add_argument("--window", type=int, default=16, help="messages granted ahead of reading")
    parser.add_argument("--timeout", type=float, default=10, help="seconds the stream may take")
    args = parser.parse_args()

    client_id = "py-" + os.urandom(6).hex()
    request_topic = "mqttrpc/%s/%s/%s" % (args.service, args.target, args.method)
    response_topic = "mqttrpc/responses/" + client_id
    correlation = os.urandom(16)
    done = threading.Event()
    state = {"next": 0, "early": {}, "granted": args.window, "status": None}

    def properties(user):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = response_topic
        props.CorrelationData = correlation
        props.MessageExpiryInterval = max(1, math.ceil(args.timeout))
        props.UserProperty = list(user.items())
        return props

    def on_connect(client, userdata, flags, reason_code, properties=None):
        if reason_code != 0:
            print("watch.py: connect refused: %s" % reason_code, file=sys.stderr)
            done.set()
            return
        client.subscribe(response_topic, qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, props=None):
        # The open: the request, the window, the deadline.
        p = properties({"mqttrpc-window": str(args.window),
                        "mqttrpc-timeout": str(int(args.timeout * 1000))})
        p.ContentType = "application/json"
        p.PayloadFormatIndicator = 1
        client.publish(request_topic, args.body.encode(), qos=1, properties=p)

    def deliver(client, seq, msg, user):
        """Handle message seq, the next in order."""
        if "mqttrpc-status" in user:  # the final message ends the stream
            state["status"] = {"status": int(user["mqttrpc-status"]),
                               "message": user.get("mqttrpc-message", "")}
            done.set()
            return
        print(json.dumps({"seq": seq, "payload": json.loads(msg.payload or b"{}")},
                         ensure_ascii=False, separators=(",", ":")), flush=True)
        consumed = seq + 1
        if consumed + args.window - state["granted"] >= max(args.window // 2, 1):
            state["granted"] = consumed + args.window
            client.publish(request_topic, b"", qos=1,
                           properties=properties({"mqttrpc-credit": str(state["granted"])}))

    def on_message(client, userdata, msg):
        props = msg.properties
        if getattr(props, "CorrelationData", None) != correlation:
            return
        user = dict(getattr(props, "UserProperty", []))
        if "mqttrpc-seq" not in user:
            if "mqttrpc-status" in user:  # refused before the stream began
                state["status"] = {"status": int(user["mqttrpc-status"]),
                                   "message": user.get("mqttrpc-message", "")}
                done.set()
            return  # a keepalive or credit message
        seq = int(user["mqttrpc-seq"])
        if seq < state["next"] or seq in state["early"]:
            return  # a copy
        state["early"][seq] = (msg, user)
        while state["next"] in state["early"] and not done.is_set():
            m, u = state["early"].pop(state["next"])
            state["next"] += 1
            deliver(client, state["next"] - 1, m, u)

    if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2.x
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
    else:  # paho-mqtt 1.x
        client = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(args.host, args.port, keepalive=30, clean_start=True)
    except OSError as err:
        print("watch.py: connect to %s:%d: %s" % (args.host, args.port, err), file=sys.stderr)
        return 2
    client.loop_start()
    if not done.wait(args.timeout):
        print("watch.py: the stream did not end within %gs" % args.timeout, file=sys.stderr)
    client.disconnect()
    client.loop_stop()
    if state["status"] is None:
        return 2
    print(json.dumps(state["status"], ensure_ascii=False, separators=(",", ":")))
    return 0 if state["status"]["status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
