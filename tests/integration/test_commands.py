"""Kafka to MQTT through the real daemon: a record on the command topic is
published to its device's MQTT topic (QoS 1), its offset committed only after
the broker acknowledged it; a record that cannot be routed goes to the
dead-letter topic with its reason."""

from __future__ import annotations

import json

from confluent_kafka import Consumer, Producer, TopicPartition

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, MqttSubscriber, kafka_read, wait_until


def _commands_config(setup: BridgeSetup) -> str:
    return f"""
[[commands]]
name = "device-commands"
kafka_topic = "commands.{setup.unique}"
mqtt_topic = "tenant/{{tenant}}/device/{{device}}/command"
dead_letter_topic = "commands-dlq.{setup.unique}"
group_id = "commands-{setup.unique}"
start_from = "earliest"
session_timeout_ms = 1500
"""


def _committed(setup: BridgeSetup) -> int:
    consumer = Consumer(
        {"bootstrap.servers": setup.tansu.bootstrap, "group.id": f"commands-{setup.unique}"}
    )
    try:
        parts = [TopicPartition(f"commands.{setup.unique}", p) for p in range(4)]
        committed = consumer.committed(parts, timeout=10)
        return sum(max(tp.offset, 0) for tp in committed)
    finally:
        consumer.close()


def test_commands_reach_devices_and_offsets_follow_acknowledgements(setup: BridgeSetup) -> None:
    producer = Producer({"bootstrap.servers": setup.tansu.bootstrap})
    topic = f"commands.{setup.unique}"
    # Create the topic before the daemon subscribes (Tansu creates it on produce).
    producer.produce(
        topic,
        json.dumps({"tenant": "t1", "device": "D1", "action": "reboot"}).encode(),
        headers=[("request_id", b"r-0")],
    )
    producer.flush(10)
    with MqttSubscriber(setup.mosquitto.url, f"device-{setup.unique}") as device:
        device.subscribe("tenant/+/device/+/command", qos=1)
        with BridgeProcess(setup.config(_commands_config(setup))) as bridge:
            bridge.wait_for_event("bridge.ready", timeout=30)
            producer.produce(
                topic,
                b'{"action": "set", "interval": 5}',
                headers=[("tenant", b"t2"), ("device", b"D9")],
            )
            producer.produce(topic, b'{"action": "orphan"}')  # no device anywhere
            producer.flush(10)
            received = device.wait_for(2, timeout=30)
            (dead,) = kafka_read(setup.tansu.bootstrap, f"commands-dlq.{setup.unique}", 1)
            wait_until(lambda: _committed(setup) == 3, 30, "offsets of all three committed")
            assert bridge.stop() == 0
    by_topic = {m.topic: json.loads(m.payload) for m in received}
    assert by_topic == {
        "tenant/t1/device/D1/command": {"tenant": "t1", "device": "D1", "action": "reboot"},
        "tenant/t2/device/D9/command": {"action": "set", "interval": 5},
    }
    assert all(m.qos == 1 for m in received)
    letter = dead.json()
    assert letter["reason"] == "missing_field"
    assert "{tenant}" in letter["detail"] or "{device}" in letter["detail"]
