"""Every librdkafka configuration the bridge builds (bridge/io/kafka_config.py):
what each handle gets, what the user's properties override, and that
librdkafka itself accepts each one."""

from __future__ import annotations

from typing import Any

import confluent_kafka
import pytest

from bridge.core.settings import CommandMapping, KafkaSettings, StreamSettings
from bridge.io.kafka_config import (
    CONSUMER_PREFETCH,
    command_consumer_config,
    producer_config,
    refusal,
    replay_consumer_config,
    stream_consumer_config,
)

KAFKA = KafkaSettings(
    bootstrap="k1:9092,k2:9092",
    linger_ms=7,
    compression="zstd",
    queue_max_messages=1234,
    delivery_timeout_ms=22_000,
)
STREAM = StreamSettings(session_timeout_ms=1500)
PREFETCH = {
    "queued.max.messages.kbytes": 8192,
    "queued.min.messages": 5000,
    "fetch.max.bytes": 4 << 20,
    "max.partition.fetch.bytes": 1 << 20,
}


def test_the_consumers_prefetch_is_bounded_in_bytes() -> None:
    assert CONSUMER_PREFETCH == PREFETCH


def test_the_producer() -> None:
    assert producer_config(KAFKA, "edge-bridge-host") == {
        "bootstrap.servers": "k1:9092,k2:9092",
        "client.id": "edge-bridge-host",
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "zstd",
        "linger.ms": 7,
        "queue.buffering.max.messages": 1234,
        "message.timeout.ms": 22_000,
        "reconnect.backoff.max.ms": 10_000,
    }


def test_the_stream_consumer() -> None:
    assert stream_consumer_config(KAFKA, STREAM, "g1") == {
        "bootstrap.servers": "k1:9092,k2:9092",
        "client.id": "edge-bridge-stream",
        "group.id": "g1",
        "auto.offset.reset": "latest",
        "enable.auto.commit": False,
        "session.timeout.ms": 1500,
        "heartbeat.interval.ms": 500,
        "statistics.interval.ms": 5000,
        "topic.metadata.refresh.interval.ms": 5000,
        "fetch.wait.max.ms": 100,
        **PREFETCH,
        "reconnect.backoff.max.ms": 10_000,
    }


def test_a_stream_group_that_outlives_the_process_commits() -> None:
    shared = StreamSettings(group_id="dashboards", session_timeout_ms=200)
    conf = stream_consumer_config(KAFKA, shared, "dashboards")
    assert conf["enable.auto.commit"] is True
    assert conf["heartbeat.interval.ms"] == 100  # a third, but at least 100 ms


def test_the_replay_consumer() -> None:
    assert replay_consumer_config(KAFKA, STREAM, "r1") == {
        "bootstrap.servers": "k1:9092,k2:9092",
        "client.id": "edge-bridge-replay",
        "group.id": "r1",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
        **PREFETCH,
    }


def test_a_command_mappings_consumer() -> None:
    mapping = CommandMapping(group_id="cmds", start_from="earliest", session_timeout_ms=9000)
    assert command_consumer_config(KAFKA, mapping) == {
        "bootstrap.servers": "k1:9092,k2:9092",
        "group.id": "cmds",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 9000,
        "heartbeat.interval.ms": 3000,
        "reconnect.backoff.max.ms": 10_000,
        **PREFETCH,
    }


def test_kafka_properties_override_ours_and_the_streams_own_override_those() -> None:
    kafka = KafkaSettings(
        properties={"fetch.max.bytes": "1000000", "linger.ms": "50", "security.protocol": "ssl"}
    )
    stream = StreamSettings(consumer_properties={"fetch.max.bytes": "2000000"})
    producer = producer_config(kafka, "p")
    assert (producer["linger.ms"], producer["security.protocol"]) == ("50", "ssl")
    assert stream_consumer_config(kafka, stream, "g")["fetch.max.bytes"] == "2000000"
    assert replay_consumer_config(kafka, stream, "g")["fetch.max.bytes"] == "2000000"
    commands = command_consumer_config(kafka, CommandMapping())
    assert (commands["fetch.max.bytes"], commands["security.protocol"]) == ("1000000", "ssl")


@pytest.mark.parametrize(
    ("kind", "conf"),
    [
        (confluent_kafka.Producer, producer_config(KAFKA, "p")),
        (confluent_kafka.Consumer, stream_consumer_config(KAFKA, STREAM, "g")),
        (confluent_kafka.Consumer, replay_consumer_config(KAFKA, STREAM, "g")),
        (confluent_kafka.Consumer, command_consumer_config(KAFKA, CommandMapping())),
    ],
)
def test_librdkafka_accepts_every_config_we_build(kind: type[Any], conf: dict[str, Any]) -> None:
    assert refusal(kind, conf) is None


def test_a_refused_config_says_why() -> None:
    bad = KafkaSettings(properties={"no.such.property": "1"})
    problem = refusal(confluent_kafka.Producer, producer_config(bad, "p"))
    assert problem is not None and "no.such.property" in problem
