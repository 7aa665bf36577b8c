"""The naive baseline: how an MQTT-to-Kafka bridge is usually first written.

paho-mqtt's own network thread (``loop_forever``), the standard library's
``json`` in ``on_message``, one ``produce`` per record and ``poll(0)`` per
message, and paho's automatic acknowledgement: a QoS 1 message is acknowledged
when ``on_message`` returns, whether or not Kafka ever gets it.  It does the
same work per message as the bridge with the default mapping (one clean record
per metric, the raw bytes, the same key and headers), so the two rates compare
like for like.  It is not a strawman: nothing in it is deliberately slow.

Run by bench/run.py as its own process; prints ``ready`` once subscribed and
exits cleanly (flushing Kafka) on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
from confluent_kafka import Producer
from paho.mqtt.enums import CallbackAPIVersion


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")


def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--clean-topic", required=True)
    parser.add_argument("--raw-topic", required=True)
    parser.add_argument("--dlq-topic", required=True)
    parser.add_argument("--qos", type=int, choices=[0, 1], default=1)
    parser.add_argument("--client-id", default="naive-bridge")
    args = parser.parse_args()

    producer = Producer({"bootstrap.servers": args.bootstrap, "compression.type": "lz4"})
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id)

    def dead(topic: str, payload: bytes, reason: str) -> None:
        letter = {
            "reason": reason,
            "mqtt_topic": topic,
            "payload": payload.decode("utf-8", "replace"),
        }
        producer.produce(args.dlq_topic, json.dumps(letter).encode(), key=topic.encode())

    def on_message(_c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        topic = message.topic
        payload = message.payload
        levels = topic.split("/")
        if len(levels) != 5 or levels[0] != "tenant" or levels[2] != "device":
            return
        tenant, device = levels[1], levels[3]
        try:
            doc = json.loads(payload)
        except ValueError:
            dead(topic, payload, "invalid_json")
            return
        metrics = doc.get("metrics") if isinstance(doc, dict) else None
        if doc.get("schema_version") != 1 or not isinstance(metrics, dict) or not metrics:
            dead(topic, payload, "invalid_message")
            return
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        ts = doc.get("ts")
        key = f"{tenant}:{device}".encode()
        headers = [
            ("tenant", tenant.encode()),
            ("device", device.encode()),
            ("mqtt_topic", topic.encode()),
            ("schema_version", b"1"),
        ]
        for name, value in metrics.items():
            record = {
                "tenant": tenant,
                "device_serial_id": device,
                "metric": name,
                "metric_type": "bool"
                if isinstance(value, bool)
                else "numeric"
                if isinstance(value, int | float)
                else "str",
                "value": value,
                "ts": _iso(ts) if isinstance(ts, int) else ts,
                "received_at": _iso(now_ms),
                "schema_version": 1,
            }
            producer.produce(
                args.clean_topic, json.dumps(record).encode(), key=key, headers=headers
            )
        producer.produce(args.raw_topic, payload, key=key, headers=headers)
        producer.poll(0)

    def on_connect(c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            raise SystemExit(f"connect refused: {reason}")
        c.subscribe("tenant/+/device/+/telemetry", args.qos)

    def on_subscribe(_c: Any, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        print("ready", flush=True)

    def on_sigterm(_signum: int, _frame: Any) -> None:
        client.disconnect()

    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    signal.signal(signal.SIGTERM, on_sigterm)
    client.connect(args.mqtt_host, args.mqtt_port, keepalive=30)
    client.loop_forever()
    return 1 if producer.flush(10) else 0


if __name__ == "__main__":
    sys.exit(_main())
