"""The reference every bench run measures beside the bridge: the plainest
paho-mqtt QoS 1 subscriber there is.

It subscribes to the bench's topics, lets paho acknowledge each message on
receipt (paho's default) and does nothing else with it but count.  No JSON, no
Kafka: this is what merely *receiving* the load costs a Python process with
the usual MQTT client.  The bridge does the whole job (judge, normalize,
produce 3 records, acknowledge only after Kafka); its messages per second
divided by this one's, in the same run under the same load, is the figure that
compares across machines, since the machine's absolute speed varies 3x from
day to day and both sides move together.

Run as a ``multiprocessing`` child (:func:`run_sink`) so that it writes its
count straight into the shared value the closed-loop publishers read, the way
the Kafka probe does for the bridge.
"""

from __future__ import annotations

from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.mqtt_load import TENANT

FILTER = f"tenant/{TENANT}/device/+/telemetry"


def run_sink(host: str, port: int, qos: int, received: Synchronized[int], ready: Event) -> None:
    """Count every message into ``received`` until the process is terminated;
    ``ready`` is set once the broker granted the subscription."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho-sink")
    count = 0

    def on_message(_c: Any, _u: Any, _message: paho.MQTTMessage) -> None:
        nonlocal count
        count += 1
        received.value = count  # one writer: a plain store, no lock

    def on_connect(c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            raise SystemExit(f"paho sink: connect refused: {reason}")
        c.subscribe(FILTER, qos)

    def on_subscribe(_c: Any, _u: Any, _mid: int, _reasons: Any, _p: Any) -> None:
        ready.set()

    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.connect(host, port, keepalive=30)
    client.loop_forever()
