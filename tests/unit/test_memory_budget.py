"""The worst-case memory computed from the settings (bridge/ops/memory_budget.py),
and the consumers' prefetch bounded in bytes by default."""

from __future__ import annotations

import msgspec

from bridge.config_loader import load_config
from bridge.core.settings import Config, DeviceSpec, KafkaSettings, StreamSettings
from bridge.io.kafka_config import CONSUMER_PREFETCH, stream_consumer_config
from bridge.io.mqtt import RECV_BYTES
from bridge.ops.memory_budget import (
    BASELINE_BYTES,
    COMPRESSED_READ_SLACK_BYTES,
    LIBRDKAFKA_RECORD_BYTES,
    MESSAGE_BYTES,
    MIB,
    MIN_PUBLISH_BYTES,
    memory_budget,
)


def _default() -> Config:
    return load_config(None).config


def _consumer(record_bytes: int, queued_kbytes: int = 8192, fetch: int = 4 << 20) -> int:
    held = queued_kbytes * 1024 + fetch
    return held + held // record_bytes * LIBRDKAFKA_RECORD_BYTES


def test_default_budget_adds_up_from_the_settings() -> None:
    config = _default()
    budget = memory_budget(config, record_bytes=512)
    parts = budget.parts
    assert budget.total == sum(parts.values())
    assert parts["baseline"] == BASELINE_BYTES
    # The stream's consumer and the replays' (source "auto", no [[streams]]).
    consumers = 1 + config.stream.replay_concurrency
    assert parts["kafka_consumers"] == consumers * _consumer(512)
    # receive_maximum (2000) messages and one 64 KiB read of 64-byte ones wait
    # at most, 3 records each in the producer's queue.
    backlog = 2000 + RECV_BYTES // MIN_PUBLISH_BYTES
    assert parts["mqtt_backlog"] == backlog * (MESSAGE_BYTES + 512)
    assert parts["producer_queue"] == 3 * backlog * (512 + LIBRDKAFKA_RECORD_BYTES)
    # The stream reads back records it did not compress: no slack.
    assert parts["allocator_slack"] == 0
    # 1,000 events for each of 10 clients of one tenant, three encodings each.
    assert parts["client_queues"] == 1000 * 10 * 3 * (512 + 160)
    assert parts["alarms"] == 0 and parts["dedup"] == 0  # no rules, no dedup
    assert 150 * MIB < budget.total < 250 * MIB
    assert budget.parts == memory_budget(config).parts  # 512 bytes, 3 records: the defaults
    assert budget.describe().startswith(f"{budget.total / MIB:.0f} MiB (baseline 64.0,")


def test_consumer_properties_and_source_change_the_consumers_part() -> None:
    config = _default()
    small = {"queued.max.messages.kbytes": "1024", "fetch.max.bytes": "1048576"}
    stream = msgspec.structs.replace(config.stream, consumer_properties=small, source="local")
    budget = memory_budget(msgspec.structs.replace(config, stream=stream), record_bytes=512)
    # No live consumer with source "local", only the replays, each smaller.
    replays = config.stream.replay_concurrency
    assert budget.parts["kafka_consumers"] == replays * _consumer(512, 1024, 1 << 20)
    assert budget.parts["local_memory"] == 0
    assert budget.parts["allocator_slack"] == 0  # nothing read back


def test_receive_maximum_bounds_the_backlog_and_the_producer_queue() -> None:
    config = _default()
    mqtt = msgspec.structs.replace(config.mqtt, receive_maximum=100)
    small = memory_budget(msgspec.structs.replace(config, mqtt=mqtt), records_per_message=11)
    backlog = 100 + RECV_BYTES // MIN_PUBLISH_BYTES
    assert small.parts["mqtt_backlog"] == backlog * (MESSAGE_BYTES + 512)
    assert small.parts["producer_queue"] == 11 * backlog * (512 + LIBRDKAFKA_RECORD_BYTES)


def test_producer_kbytes_bound_lz4_and_tenants_of_the_registry() -> None:
    config = _default()
    kafka = msgspec.structs.replace(
        config.kafka, properties={"queue.buffering.max.kbytes": "1024"}, compression="lz4"
    )
    devices = {f"t{i}": {"d": DeviceSpec()} for i in range(3)}
    bounded = msgspec.structs.replace(config, kafka=kafka, devices=devices)
    budget = memory_budget(bounded, record_bytes=512)
    records = 3 * (config.mqtt.receive_maximum + RECV_BYTES // MIN_PUBLISH_BYTES)
    assert budget.parts["producer_queue"] == 1 * MIB + records * LIBRDKAFKA_RECORD_BYTES
    # The stream decompresses what it reads back: one fragmented heap.
    assert budget.parts["allocator_slack"] == COMPRESSED_READ_SLACK_BYTES
    assert budget.parts["client_queues"] == 3 * memory_budget(config).parts["client_queues"]


def test_stream_consumer_prefetch_is_bounded_in_bytes_unless_overridden() -> None:
    kafka = KafkaSettings()
    conf = stream_consumer_config(kafka, StreamSettings(), "g")
    for name, value in CONSUMER_PREFETCH.items():
        assert conf[name] == value
    override = StreamSettings(consumer_properties={"fetch.max.bytes": "2097152"})
    assert stream_consumer_config(kafka, override, "g")["fetch.max.bytes"] == "2097152"
