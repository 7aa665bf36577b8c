"""The Prometheus exposition: what a scrape of a populated IngestStats shows.

Scrapes are parsed back with prometheus-client's own parsers (the classic text
format and OpenMetrics), so the tests check what Prometheus would read, not
strings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from bridge.core.alarms import AlarmEvaluator
from bridge.core.settings import AlarmRule, MetricSpec
from bridge.ingest.stats import IngestStats
from bridge.io.spool import SpoolStats
from bridge.ops.metrics import FAMILIES, Sources, build_registry, render
from bridge.stream.service import PartitionStatus, StreamStatus

REPO = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(sources: Sources, accept: str = "") -> tuple[Samples, str]:
    body, content_type = render(build_registry(sources, process=False), accept)
    parse = om_families if "openmetrics" in content_type else text_string_to_metric_families
    samples: Samples = {}
    for family in parse(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, content_type


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def populated() -> IngestStats:
    stats = IngestStats()
    stats.received["telemetry"] = 120
    stats.received["legacy"] = 7
    stats.unmatched = 3
    stats.duplicates["telemetry"] += 2
    stats.produced["telemetry.clean"] = 300
    stats.produced["telemetry.dlq"] = 4
    stats.dead_letters["invalid_json"] += 3
    stats.dead_letters["unknown_metric"] += 1
    stats.delivery_failures = 5
    stats.dropped_qos0 = 6
    stats.acked = 110
    return stats


def mqtt_sources(stats: IngestStats, **optional: object) -> Sources:
    return Sources(stats, lambda: True, lambda: 2, **optional)  # type: ignore[arg-type]


def test_ingest_counters_are_exposed_with_their_labels() -> None:
    samples, content_type = scrape(mqtt_sources(populated(), messages_in_flight=lambda: 9))
    assert content_type.startswith("text/plain; version=0.0.4")
    assert value(samples, "edge_bridge_mqtt_messages_received_total", mapping="telemetry") == 120
    assert value(samples, "edge_bridge_mqtt_messages_received_total", mapping="legacy") == 7
    assert value(samples, "edge_bridge_mqtt_messages_unmatched_total") == 3
    assert value(samples, "edge_bridge_mqtt_messages_duplicate_total", mapping="telemetry") == 2
    assert (
        value(samples, "edge_bridge_kafka_records_produced_total", topic="telemetry.clean") == 300
    )
    assert value(samples, "edge_bridge_kafka_records_produced_total", topic="telemetry.dlq") == 4
    assert value(samples, "edge_bridge_dead_letters_total", reason="invalid_json") == 3
    assert value(samples, "edge_bridge_dead_letters_total", reason="unknown_metric") == 1
    assert value(samples, "edge_bridge_kafka_delivery_failures_total") == 5
    assert value(samples, "edge_bridge_qos0_records_dropped_total") == 6
    assert value(samples, "edge_bridge_mqtt_messages_acked_total") == 110
    assert value(samples, "edge_bridge_messages_in_flight") == 9
    assert value(samples, "edge_bridge_mqtt_connected") == 1
    assert value(samples, "edge_bridge_mqtt_reconnects_total") == 2


def test_latency_histogram_is_cumulative_with_inf_as_the_total() -> None:
    stats = IngestStats()
    # 0.001 sits exactly on a bound: Prometheus' le means "less or equal".
    for seconds in (0.0004, 0.001, 0.004, 0.004, 0.3, 45.0):
        stats.observe_latency(seconds)
    samples, _ = scrape(mqtt_sources(stats))

    def bucket(le: str) -> float:
        return value(samples, "edge_bridge_kafka_delivery_seconds_bucket", le=le)

    assert bucket("0.001") == 2
    assert bucket("0.0025") == 2
    assert bucket("0.005") == 4
    assert bucket("0.25") == 4
    assert bucket("0.5") == 5
    assert bucket("30.0") == 5  # 45 s is past the last bound...
    assert bucket("+Inf") == 6  # ...and counts only here
    assert value(samples, "edge_bridge_kafka_delivery_seconds_count") == 6
    assert value(samples, "edge_bridge_kafka_delivery_seconds_sum") == pytest.approx(45.3094)
    bounds = [le for (name, labels) in samples if name.endswith("_bucket") for _, le in labels]
    assert len(bounds) == len(stats.latency_buckets) + 1


@dataclass
class Forwarder:
    published: int
    dead_letters: int


def stream_status(**change: object) -> StreamStatus:
    status = StreamStatus(
        total_connections=3,
        per_tenant={"t1": 2, "*": 1},
        max_per_tenant=10,
        source="kafka",
        kafka_state="ok",
        topics=["telemetry.clean"],
        connections={"websocket": {"t1": 2}, "sse": {"*": 1}},
        events_dropped=40,
        slow_disconnects=1,
        malformed_records=0,
        partitions=[
            PartitionStatus("telemetry.clean", 0, 17, 17, 0),
            PartitionStatus("telemetry.clean", 3, 5, 30, 25),
            PartitionStatus("telemetry.clean", 1, None, None, None),
        ],
    )
    return msgspec.structs.replace(status, **change)


def test_optional_sources_are_exposed_when_given() -> None:
    stats = IngestStats(spooled=50, spool_drained=38, spool_dropped=3, spool_full_waits=2)
    sources = mqtt_sources(
        stats,
        kafka_state=lambda: "down",
        kafka_queue=lambda: 17,
        spool=lambda: SpoolStats(
            bytes=4096, records_pending=12, segments=1, dropped_total=3, corrupt_total=1
        ),
        stream=stream_status,
        commands=lambda: {"commands": Forwarder(9, 2)},
    )
    samples, _ = scrape(sources)
    assert value(samples, "edge_bridge_kafka_producer_state", state="down") == 1
    assert value(samples, "edge_bridge_kafka_producer_state", state="up") == 0
    assert value(samples, "edge_bridge_kafka_producer_state", state="connecting") == 0
    assert value(samples, "edge_bridge_kafka_producer_queue_records") == 17
    assert value(samples, "edge_bridge_spool_bytes") == 4096
    assert value(samples, "edge_bridge_spool_records") == 12
    assert value(samples, "edge_bridge_spool_appended_records_total") == 50
    assert value(samples, "edge_bridge_spool_drained_records_total") == 38
    assert value(samples, "edge_bridge_spool_dropped_records_total") == 3
    assert value(samples, "edge_bridge_spool_full_total") == 2
    assert value(samples, "edge_bridge_spool_corrupt_records_total") == 1
    assert value(samples, "edge_bridge_stream_connections", tenant="t1", kind="websocket") == 2
    assert value(samples, "edge_bridge_stream_connections", tenant="*", kind="sse") == 1
    assert value(samples, "edge_bridge_stream_events_dropped_total") == 40
    assert value(samples, "edge_bridge_stream_slow_disconnects_total") == 1
    assert value(samples, "edge_bridge_consumer_lag", topic="telemetry.clean", partition="0") == 0
    assert value(samples, "edge_bridge_consumer_lag", topic="telemetry.clean", partition="3") == 25
    # A partition whose lag is not known yet is left out, not reported as 0.
    assert ("edge_bridge_consumer_lag", (("partition", "1"), ("topic", "telemetry.clean"))) not in (
        samples
    )
    assert value(samples, "edge_bridge_commands_published_total", mapping="commands") == 9
    assert value(samples, "edge_bridge_command_dead_letters_total", mapping="commands") == 2


def test_absent_sources_leave_their_families_out() -> None:
    samples, _ = scrape(mqtt_sources(IngestStats(), spool=lambda: None))
    names = {name for name, _ in samples}
    absent_families = ("spool_", "stream_", "consumer_lag", "kafka_producer_", "command")
    for absent in absent_families:
        assert not any(name.startswith(f"edge_bridge_{absent}") for name in names), absent


def test_values_are_read_at_scrape_time_and_only_then() -> None:
    calls: list[str] = []

    def counted(name: str, result: object) -> Callable[[], object]:
        def read() -> object:
            calls.append(name)
            return result

        return read

    stats = IngestStats()
    sources = Sources(
        stats,
        counted("connected", False),  # type: ignore[arg-type]
        counted("reconnects", 0),  # type: ignore[arg-type]
        stream=counted("stream", stream_status()),  # type: ignore[arg-type]
    )
    registry = build_registry(sources, process=False)
    assert calls == []  # registering does not collect
    stats.received["telemetry"] = 1
    first, _ = render(registry)
    stats.received["telemetry"] += 41
    second, _ = render(registry)
    assert sorted(calls) == sorted(["connected", "reconnects", "stream"] * 2)
    assert b'mapping="telemetry"} 1.0' in first
    assert b'mapping="telemetry"} 42.0' in second


def test_openmetrics_is_served_to_who_asks_for_it() -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    samples, content_type = scrape(mqtt_sources(populated()), accept)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert value(samples, "edge_bridge_mqtt_messages_received_total", mapping="telemetry") == 120


def test_registries_are_independent_and_include_process_metrics() -> None:
    sources = mqtt_sources(IngestStats())
    # The global registry would refuse the second collector as a duplicate.
    first, second = build_registry(sources), build_registry(sources)
    body, _ = render(second)
    assert b"process_resident_memory_bytes" in body
    assert render(first)[0].count(b"# TYPE edge_bridge_mqtt_connected gauge") == 1


def test_every_family_is_documented() -> None:
    text = (REPO / "docs" / "architecture.md").read_text()
    missing = [f.exposed for f in FAMILIES.values() if f"`{f.exposed}`" not in text]
    assert not missing, f"add these to the metrics table of docs/architecture.md: {missing}"


def test_spool_availability_is_exported_even_when_the_spool_never_opened() -> None:
    stats = IngestStats(spool_unavailable=2)
    available = False
    sources = mqtt_sources(stats, spool=lambda: None, spool_available=lambda: available)
    samples, _ = scrape(sources)
    assert value(samples, "edge_bridge_spool_available") == 0
    assert value(samples, "edge_bridge_spool_unavailable_total") == 2
    assert ("edge_bridge_spool_bytes", ()) not in samples  # nothing open to measure
    available = True
    samples, _ = scrape(sources)
    assert value(samples, "edge_bridge_spool_available") == 1


def test_internal_errors_and_the_alarm_state_bound_are_exposed() -> None:
    alarms = AlarmEvaluator({"t": MetricSpec(alarms=[AlarmRule("above", 1.0)])}, max_series=2)
    for device in ("D1", "D2", "D3"):
        alarms.observe("t1", device, "t", 0.0, 0, "")
    stats = IngestStats(internal_errors=4)
    samples, _ = scrape(mqtt_sources(stats, alarms=lambda: alarms))
    assert value(samples, "edge_bridge_internal_errors_total") == 4
    assert value(samples, "edge_bridge_alarm_series") == 2
    assert value(samples, "edge_bridge_alarm_series_evicted_total") == 1
    # Without alarm rules the alarm families are absent, not zero.
    samples, _ = scrape(mqtt_sources(stats, alarms=lambda: AlarmEvaluator({})))
    assert not any(name.startswith("edge_bridge_alarm_") for name, _ in samples)
