"""The worst-case memory computed from the settings (bridge/ops/memory_budget.py),
and the consumers' prefetch bounded in bytes by default."""

from __future__ import annotations

import msgspec

from bridge.config_loader import load_config
from bridge.core.settings import Config, DeviceSpec, KafkaSettings, StreamSettings
from bridge.io.kafka_config import CONSUMER_PREFETCH, stream_consumer_config
from bridge.ops.memory_budget import (
    BASELINE_BYTES,
    LIBRDKAFKA_RECORD_BYTES,
    MIB,
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
    # 200,000 records of 512 bytes, under librdkafka's 1 GiB default.
    assert parts["producer_queue"] == 200_000 * (512 + LIBRDKAFKA_RECORD_BYTES)
    # 1,000 events for each of 10 clients of one tenant, three encodings each.
    assert parts["client_queues"] == 1000 * 10 * 3 * (512 + 160)
    assert parts["alarms"] == 0 and parts["dedup"] == 0  # no rules, no dedup
    assert 200 * MIB < budget.total < 400 * MIB
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


def test_producer_kbytes_bound_and_tenants_of_the_registry() -> None:
    config = _default()
    kafka = msgspec.structs.replace(
        config.kafka, properties={"queue.buffering.max.kbytes": "16384"}
    )
    devices = {f"t{i}": {"d": DeviceSpec()} for i in range(3)}
    bounded = msgspec.structs.replace(config, kafka=kafka, devices=devices)
    budget = memory_budget(bounded, record_bytes=512)
    assert budget.parts["producer_queue"] == 16 * MIB + 200_000 * LIBRDKAFKA_RECORD_BYTES
    assert budget.parts["client_queues"] == 3 * memory_budget(config).parts["client_queues"]


def test_stream_consumer_prefetch_is_bounded_in_bytes_unless_overridden() -> None:
    kafka = KafkaSettings()
    conf = stream_consumer_config(kafka, StreamSettings(), "g")
    for name, value in CONSUMER_PREFETCH.items():
        assert conf[name] == value
    override = StreamSettings(consumer_properties={"fetch.max.bytes": "2097152"})
    assert stream_consumer_config(kafka, override, "g")["fetch.max.bytes"] == "2097152"
