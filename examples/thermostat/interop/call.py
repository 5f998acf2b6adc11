#!/usr/bin/env python3
"""Call an mqttrpc method with JSON from Python paho-mqtt (1.6 or 2.x).

    python3 call.py 127.0.0.1 1883 dev-7 SetTarget '{"celsius": 22}'

prints one JSON line

    {"status":0,"message":"","target":"","payload":{"previousCelsius":20}}

and exits 0 when the status is 0 (OK), 1 on any other status, 2 when no
answer came (timeout, or the broker could not be reached). The wire protocol
is docs/protocol.md; install paho-mqtt with
`apt-get install -y python3-paho-mqtt` or `pip install paho-mqtt`.
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

UNAVAILABLE = 14  # the status of a call nobody is subscribed to


def main():
    parser = argparse.ArgumentParser(description="Call an mqttrpc method with JSON.")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("target", help="server ID, e.g. dev-7 (or _any)")
    parser.add_argument("method", help="method name, e.g. SetTarget")
    parser.add_argument("body", nargs="?", default="{}", help="request message as JSON")
    parser.add_argument("--service", default="example.thermostat.v1.Thermostat",
                        help="full protobuf service name")
    parser.add_argument("--timeout", type=float, default=5, help="seconds to wait for the answer")
    args = parser.parse_args()

    client_id = "py-" + os.urandom(6).hex()
    request_topic = "mqttrpc/%s/%s/%s" % (args.service, args.target, args.method)
    response_topic = "mqttrpc/responses/" + client_id
    correlation = os.urandom(16)
    done = threading.Event()  # set once there is an answer or no hope of one
    result = {}  # stays empty if the call failed without an answer

    def finish(status, message="", target="", payload=None):
        if not done.is_set():
            result.update(status=status, message=message, target=target, payload=payload)
            done.set()

    def give_up(why):
        if not done.is_set():
            print("call.py: " + why, file=sys.stderr)
            done.set()

    def on_connect(client, userdata, flags, reason_code, properties=None):
        if reason_code != 0:
            give_up("connect refused: %s" % reason_code)
            return
        # Subscribe first, publish once the broker has confirmed (on_subscribe),
        # so that the answer cannot arrive before we listen.
        client.subscribe(response_topic, qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties=None):
        if getattr(reason_codes[0], "value", reason_codes[0]) >= 0x80:
            give_up("subscribe %s refused: %s" % (response_topic, reason_codes[0]))
            return
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = response_topic
        props.CorrelationData = correlation
        props.ContentType = "application/json"
        props.PayloadFormatIndicator = 1
        props.MessageExpiryInterval = max(1, math.ceil(args.timeout))
        props.UserProperty = ("mqttrpc-timeout", str(int(args.timeout * 1000)))
        client.publish(request_topic, args.body.encode(), qos=1, properties=props)

    def on_publish(client, userdata, mid, reason_code=None, properties=None):
        # paho-mqtt 2.x passes the PUBACK's reason code (1.6 does not):
        # 0x10 "no matching subscribers" means no server serves this target.
        if getattr(reason_code, "value", reason_code) == 0x10:
            finish(UNAVAILABLE, "no matching subscribers on " + request_topic)

    def on_message(client, userdata, msg):
        props = msg.properties
        if getattr(props, "CorrelationData", None) != correlation:
            return  # an answer to some other call
        user = dict(getattr(props, "UserProperty", []))
        try:
            status = int(user.get("mqttrpc-status", "0"))  # absent means 0, OK
        except ValueError:
            status = 2  # Unknown: a malformed status
        payload = None
        if msg.payload:
            try:
                payload = json.loads(msg.payload)
            except ValueError:
                payload = msg.payload.decode(errors="replace")
        finish(status, user.get("mqttrpc-message", ""), user.get("mqttrpc-target", ""), payload)

    if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2.x
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
    else:  # paho-mqtt 1.x
        client = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.on_message = on_message
    try:
        client.connect(args.host, args.port, keepalive=30, clean_start=True)
    except OSError as err:
        print("call.py: connect to %s:%d: %s" % (args.host, args.port, err), file=sys.stderr)
        return 2
    client.loop_start()
    if not done.wait(args.timeout):
        give_up("no answer from %s within %gs" % (request_topic, args.timeout))
    client.disconnect()
    client.loop_stop()
    if not result:
        return 2
    print(json.dumps(result, ensure_ascii=False, separators=(",", ":")))
    return 0 if result["status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
