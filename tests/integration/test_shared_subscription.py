"""Two bridge instances sharing one MQTT 5 subscription (``mqtt.shared_group``):
the broker hands each message to one of them, so together they carry the load
and Kafka holds every message exactly once."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, free_port, kafka_read, publish_many, write_config

MESSAGES = 2000
DEVICES = 50


def _instance_config(setup: BridgeSetup, name: str) -> Path:
    """One instance: its own client id, listen port and spool; the same
    broker, topics and shared group as the other."""
    return write_config(
        setup.workdir,
        f"""
        listen = "127.0.0.1:{free_port()}"
        alarms_topic = "alarms.{setup.unique}"

        [mqtt]
        url = "{setup.mosquitto.url}"
        client_id = "{name}-{setup.unique}"
        protocol = "5"

        [kafka]
        bootstrap = "{setup.tansu.bootstrap}"

        [stream]
        source = "local"

        [spool]
        path = "{setup.workdir / name / "spool"}"

        [[mappings]]
        name = "telemetry"
        [mappings.mqtt]
        qos = 1
        shared_group = "bridges"
        [mappings.kafka]
        clean_topic = "{setup.clean}"
        raw_topic = "{setup.raw}"
        dead_letter_topic = "{setup.dlq}"
        """,
        name=f"{name}.toml",
    )


def _messages() -> list[tuple[str, bytes, int]]:
    out = []
    for seq in range(MESSAGES):
        device = f"DEV-{seq % DEVICES:03d}"
        payload = {"schema_version": 1, "device": device, "metrics": {"seq": seq}}
        out.append((f"tenant/t1/device/{device}/telemetry", json.dumps(payload).encode(), 1))
    return out


def test_two_instances_share_the_load_and_handle_each_message_once(setup: BridgeSetup) -> None:
    with (
        BridgeProcess(_instance_config(setup, "a")) as first,
        BridgeProcess(_instance_config(setup, "b")) as second,
    ):
        for bridge in (first, second):
            ready = bridge.wait_for_event("bridge.ready", timeout=30)
            assert ready["mappings"] == ["telemetry"]
        connected = first.events("mqtt.connected")[0]
        assert connected["subscriptions"] == ["$share/bridges/tenant/+/device/+/telemetry"]

        publish_many(setup.mosquitto.url, _messages())
        clean = kafka_read(setup.tansu.bootstrap, setup.clean, expected=MESSAGES, timeout=60)
        raw = kafka_read(setup.tansu.bootstrap, setup.raw, expected=MESSAGES, timeout=60)
        assert first.stop() == 0
        assert second.stop() == 0

    seqs = sorted(record.json()["value"] for record in clean)
    assert seqs == list(range(MESSAGES)), "every message exactly once on the clean topic"
    assert len(raw) == MESSAGES
    assert len({record.value for record in raw}) == MESSAGES

    handled = [bridge.events("bridge.stopped")[0]["received"] for bridge in (first, second)]
    assert sum(handled) == MESSAGES
    # mosquitto hands a shared subscription's messages round robin.
    assert min(handled) >= MESSAGES // 4, handled
    for bridge, count in zip((first, second), handled, strict=True):
        stopped = bridge.events("bridge.stopped")[0]
        assert stopped["acked"] == count
        assert stopped["in_flight"] == 0
        # One clean and one raw record per message, each confirmed by Kafka.
        assert stopped["produced"] == {setup.clean: count, setup.raw: count}, stopped


def test_a_stopped_instance_gets_its_share_when_it_returns(setup: BridgeSetup) -> None:
    """mosquitto keeps routing a share to the stopped instance's persistent
    session and queues it there (docs/benchmarks.md, scaling): nothing is lost
    or handled twice, but that share waits until the instance is back."""
    with BridgeProcess(_instance_config(setup, "a")) as first:
        first.wait_for_event("bridge.ready", timeout=30)
        with BridgeProcess(_instance_config(setup, "b")) as second:
            second.wait_for_event("bridge.ready", timeout=30)
            assert second.stop() == 0

        publish_many(setup.mosquitto.url, _messages())
        while_away = kafka_read(setup.tansu.bootstrap, setup.clean, expected=MESSAGES // 2)
        assert 0 < len(while_away) < MESSAGES

        with BridgeProcess(_instance_config(setup, "b")) as second:
            resumed = second.wait_for_event("mqtt.connected", timeout=30)
            assert resumed["session_present"] is True
            clean = kafka_read(setup.tansu.bootstrap, setup.clean, expected=MESSAGES, timeout=60)
            assert second.stop() == 0
        assert first.stop() == 0

    assert sorted(record.json()["value"] for record in clean) == list(range(MESSAGES))
