"""The shared fixtures against the real programs they drive.

If these fail, every integration test built on tests/support is suspect, so
they check the helpers' own promises: exact counts from kafka_read (including
the duplicates it must not hide), the test broker never being the system one,
and a mosquitto restart that keeps a persistent session's queued message.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.support import (
    BridgeProcess,
    Mosquitto,
    MqttSubscriber,
    Tansu,
    free_port,
    kafka_read,
    publish_many,
    wait_until,
)

Headers = list[tuple[str, str | bytes | None]]


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, Headers]]) -> None:
    """Produce (key, value, headers) with the producer settings the bridge uses."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for key, value, headers in records:
        producer.produce(topic, value=value, key=key, headers=headers)
    assert producer.flush(20) == 0, "records still undelivered after 20 s"


def _process_state(pid: int) -> str:
    """The one-letter state of a process (R, S, T for stopped...), from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def test_mosquitto_publish_subscribe_roundtrip(mosquitto: Mosquitto, unique: str) -> None:
    assert mosquitto.port != 1883
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    sent = [(f"smoke/{unique}/{i}", f"payload-{i}".encode(), i % 2) for i in range(20)]

    with MqttSubscriber(mosquitto.url, f"sub-{unique}") as subscriber:
        subscriber.subscribe(f"smoke/{unique}/#", qos=1)
        assert publish_many(mosquitto.url, sent) == 20
        received = subscriber.wait_for(20)

    assert sorted((m.topic, m.payload, m.qos) for m in received) == sorted(sent)


def test_kafka_read_returns_exactly_what_was_produced(tansu: Tansu, unique: str) -> None:
    topic = f"smoke.{unique}"
    produced: list[tuple[bytes, bytes, Headers]] = [
        (f"key-{i}".encode(), f'{{"n": {i}}}'.encode(), [("tenant", b"t1"), ("n", str(i).encode())])
        for i in range(100)
    ]
    _produce(tansu.bootstrap, topic, produced)

    records = kafka_read(tansu.bootstrap, topic, expected=100, timeout=20)

    assert len(records) == 100
    assert {r.topic for r in records} == {topic}
    # Keys spread over Tansu's 4 auto-created partitions: all of them are read.
    assert len({r.partition for r in records}) > 1
    by_key = {r.key: r for r in records}
    assert len(by_key) == 100
    for key, value, headers in produced:
        record = by_key[key]
        assert record.value == value
        assert record.headers == dict(headers)
    assert sorted(r.json()["n"] for r in records) == list(range(100))


def test_kafka_read_reports_records_beyond_the_expected_count(tansu: Tansu, unique: str) -> None:
    """Duplicates must show up as a count above `expected`, not be cut off."""
    topic = f"smoke.dup.{unique}"
    _produce(tansu.bootstrap, topic, [(b"same", b"again", [])] * 5)

    records = kafka_read(tansu.bootstrap, topic, expected=3, timeout=20)

    assert len(records) == 5
    assert {(r.key, r.value) for r in records} == {(b"same", b"again")}


def test_kafka_read_of_a_missing_topic(tansu: Tansu, unique: str) -> None:
    topic = f"smoke.never.{unique}"
    assert kafka_read(tansu.bootstrap, topic, expected=0, timeout=0.5) == []
    with pytest.raises(AssertionError, match="no metadata"):
        kafka_read(tansu.bootstrap, topic, expected=1, timeout=0.5)


def test_tansu_pause_holds_records_until_resume(tansu: Tansu, unique: str) -> None:
    topic = f"smoke.pause.{unique}"
    tansu.pause()
    try:
        wait_until(lambda: _process_state(tansu.pid) == "T", 5, "tansu to be stopped")
        producer = Producer(
            {"bootstrap.servers": tansu.bootstrap, "enable.idempotence": True, "acks": "all"}
        )
        producer.produce(topic, value=b"held", key=b"k")
    finally:
        tansu.resume()
    assert producer.flush(20) == 0

    records = kafka_read(tansu.bootstrap, topic, expected=1, timeout=20)

    assert [(r.key, r.value) for r in records] == [(b"k", b"held")]


def test_mosquitto_restart_keeps_persistent_session_and_queued_message(
    mosquitto: Mosquitto, unique: str
) -> None:
    client_id = f"persistent-{unique}"
    topic = f"smoke/{unique}/queued"
    with MqttSubscriber(mosquitto.url, client_id, clean_session=False) as subscriber:
        subscriber.subscribe(topic, qos=1)
    # The subscriber is away: the broker queues the QoS 1 message for it.
    publish_many(mosquitto.url, [(topic, b"kept across restart", 1)])
    port = mosquitto.port

    mosquitto.restart()

    assert mosquitto.port == port
    with MqttSubscriber(mosquitto.url, client_id, clean_session=False) as subscriber:
        assert subscriber.session_present
        received = subscriber.wait_for(1)
    assert [(m.topic, m.payload, m.qos) for m in received] == [(topic, b"kept across restart", 1)]


def test_bridge_process_reports_ready_and_stops_cleanly(
    mosquitto: Mosquitto,
    tansu: Tansu,
    unique: str,
    tmp_path: Path,
    tmp_config: Callable[..., Path],
) -> None:
    config = tmp_config(
        f"""
        [mqtt]
        client_id = "smoke-{unique}"

        [spool]
        path = "{tmp_path / "spool"}"
        """
    )
    args = [
        "--mqtt-url", mosquitto.url,
        "--kafka-bootstrap", tansu.bootstrap,
        "--listen", f"127.0.0.1:{free_port()}",
    ]  # fmt: skip
    with BridgeProcess(config, args=args) as bridge:
        ready = bridge.wait_for_event("bridge.ready", timeout=20)
        assert bridge.events("bridge.ready") == [ready]
        assert bridge.stop() == 0


def test_bridge_process_fails_fast_when_the_daemon_exits(tmp_path: Path) -> None:
    with BridgeProcess(tmp_path / "missing.toml") as bridge:
        with pytest.raises(AssertionError, match="exited with code"):
            bridge.wait_for_event("bridge.ready", timeout=20)
        assert bridge.returncode not in (None, 0)
