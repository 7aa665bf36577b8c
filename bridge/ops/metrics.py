"""Prometheus exposition of the daemon's counters, read at scrape time.

The data path never touches prometheus-client: it bumps plain ints and dicts in
:class:`bridge.ingest.stats.IngestStats` (an attribute increment, nothing else), and
the other parts keep their own counters.  A custom collector turns those into
metric families only when ``/metrics`` is scraped, so a message costs no
``Counter.inc()``, no label lookup and no lock, and the exposition format stays
prometheus-client's.

The collector reads everything through :class:`Sources`, a set of callables the
daemon fills in, so this module depends on no adapter's internals.  The
callables run on the thread that renders (the trio thread: the counters are
mutated there, and reading them from a worker thread could see a dict change
size mid-iteration), so each must return at once: a cached snapshot, never a
blocking call such as :meth:`bridge.io.spool.Spool.stats`, which may wait for
an fsync.

Every family is listed in :data:`FAMILIES` with its help text and labels;
``docs/architecture.md`` documents the same names (a test keeps them equal).
A family whose source is absent (no spool, no stream) is left out entirely
rather than reported as zero, so "not running" and "idle" stay different.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from itertools import accumulate
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from bridge.ingest.stats import IngestStats

PREFIX = "edge_bridge_"


@dataclass(frozen=True)
class Family:
    """One metric family: its name (without the ``_total`` a counter gets),
    type, label names and help text."""

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    labels: tuple[str, ...]
    help: str

    @property
    def exposed(self) -> str:
        """The name as it appears in the text format (counters end in ``_total``)."""
        return f"{self.name}_total" if self.kind == "counter" else self.name


_TABLE: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("build_info", "gauge", ("version",), "Always 1; the version label says what runs."),
    # ingest
    ("mqtt_messages_received", "counter", ("mapping",),
     "MQTT messages matched by a mapping, duplicates and invalid ones included."),
    ("mqtt_messages_unmatched", "counter", (), "MQTT messages no mapping matched."),
    ("mqtt_messages_duplicate", "counter", ("mapping",),
     "MQTT messages dropped as duplicates of a recent event id."),
    ("mqtt_messages_acked", "counter", (),
     "QoS 1 messages acknowledged to the broker once Kafka or the spool held all their records."),
    ("qos0_records_dropped", "counter", (),
     "Records of QoS 0 messages dropped because the Kafka producer queue was full."),
    ("messages_in_flight", "gauge", (),
     "MQTT messages whose records are not all acknowledged by Kafka or the spool yet."),
    ("kafka_records_produced", "counter", ("topic",),
     "Records Kafka acknowledged, per topic (clean, raw, dead letter, alarms)."),
    ("dead_letters", "counter", ("reason",),
     "Dead-letter records made by ingest, per reason (the reason field of the record)."),
    ("internal_errors", "counter", (),
     "Messages the core failed on (a bug): each became an internal_error dead letter, acked."),
    ("alarm_series", "gauge", (),
     "Alarm rule states kept, one per tenant, device, metric and rule (limits.max_alarm_series)."),
    ("alarm_series_evicted", "counter", (),
     "Alarm rule states forgotten, least recently seen first, to stay within the bound."),
    ("kafka_delivery_failures", "counter", (),
     "Deliveries librdkafka gave up on; each record is produced again or spooled."),
    ("kafka_delivery_seconds", "histogram", (),
     "From MQTT message received to all its records held by Kafka (or the spool)."),
    # MQTT and Kafka connections
    ("mqtt_connected", "gauge", (), "1 while the MQTT session is up, else 0."),
    ("mqtt_reconnects", "counter", (),
     "MQTT sessions lost or connection attempts failed; each is retried with backoff."),
    ("mqtt_acks_waiting", "gauge", (),
     "QoS 1 messages whose records are held but whose PUBACK waits for an earlier "
     "message (MQTT acknowledges in arrival order)."),
    ("kafka_producer_state", "gauge", ("state",),
     "1 for the producer's current state (connecting, up, down), 0 for the others."),
    ("kafka_producer_queue_records", "gauge", (),
     "Records in librdkafka's queue, not acknowledged by Kafka yet."),
    ("kafka_ack_wait_seconds", "gauge", (),
     "While records wait: seconds since Kafka last acknowledged one (0 when none wait)."),
    # spool
    ("spool_bytes", "gauge", (), "Bytes of spool segments on disk."),
    ("spool_records", "gauge", (), "Records in the spool not yet delivered to Kafka."),
    ("spool_appended_records", "counter", (),
     "Records written to the disk spool because Kafka could not take them."),
    ("spool_drained_records", "counter", (), "Spooled records Kafka acknowledged."),
    ("spool_dropped_records", "counter", (),
     "Undelivered records deleted by when_full = drop_oldest."),
    ("spool_full", "counter", (),
     "Appends refused by a full spool (when_full = backpressure); MQTT acks wait."),
    ("spool_corrupt_records", "counter", (),
     "Spool records skipped because their checksum did not match."),
    ("spool_available", "gauge", (),
     "1 while the spool can take records; 0 while its disk refuses (full, read-only, "
     "I/O errors) or it could not be opened."),
    ("spool_unavailable", "counter", (),
     "Times the spool's disk started refusing it."),
    ("spool_oldest_record_age_seconds", "gauge", (),
     "Age of the oldest record in the spool (0 when it is empty)."),
    # stream
    ("stream_connections", "gauge", ("tenant", "kind"),
     "Open stream connections per tenant (* for admins watching all) and kind (websocket, sse)."),
    ("stream_events_dropped", "counter", (), "Events dropped from slow clients' full queues."),
    ("stream_slow_disconnects", "counter", (),
     "Stream clients disconnected for lagging too far behind."),
    ("consumer_lag", "gauge", ("topic", "partition"),
     "Records between the stream consumer's position and the partition's end."),
    # Kafka to MQTT
    ("commands_published", "counter", ("mapping",),
     "Command records published to MQTT and acknowledged by the broker, per command mapping."),
    ("command_dead_letters", "counter", ("mapping",),
     "Command records sent to the dead-letter topic instead, per command mapping."),
    # console
    ("console_try_refused", "counter", ("reason",),
     "Console \"try a payload\" requests refused, per reason (unauthenticated, forbidden...)."),
    # operations
    ("config_reloads", "counter", ("result",),
     "Config reloads (SIGHUP or --watch-config) applied, refused with the old config kept, "
     "or incomplete (a step of applying one failed; see bridge.reload_step_failed)."),
    # Sparkplug B
    ("sparkplug_events", "counter", ("kind",),
     "Sparkplug B bookkeeping: seq_gaps, null_metrics, dead_device_data, stale_deaths, "
     "rebirths_requested."),
)  # fmt: skip

#: Every family the collector can yield, by short name (without the prefix).
FAMILIES: dict[str, Family] = {
    short: Family(PREFIX + short, kind, labels, text) for short, kind, labels, text in _TABLE
}

KAFKA_STATES = ("connecting", "up", "down")
RELOAD_RESULTS = ("applied", "incomplete", "refused")


class SpoolView(Protocol):
    """What the collector reads from a spool snapshot
    (:class:`bridge.io.spool.SpoolStats` has these attributes)."""

    @property
    def bytes(self) -> int: ...
    @property
    def records_pending(self) -> int: ...
    @property
    def corrupt_total(self) -> int: ...


class PartitionView(Protocol):
    """One partition the stream consumes; ``lag`` None while unknown."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def lag(self) -> int | None: ...


class StreamView(Protocol):
    """The live stream's numbers (:class:`bridge.stream.service.StreamStatus`
    has these attributes).  ``connections``: transport (websocket, sse) ->
    tenant (``*`` for an admin watching every tenant) -> open connections."""

    @property
    def connections(self) -> Mapping[str, Mapping[str, int]]: ...
    @property
    def events_dropped(self) -> int: ...
    @property
    def slow_disconnects(self) -> int: ...
    @property
    def partitions(self) -> Sequence[PartitionView]: ...


class AlarmView(Protocol):
    """The alarm rules' state (:class:`bridge.core.alarms.AlarmEvaluator`)."""

    evicted: int

    def __bool__(self) -> bool: ...
    def __len__(self) -> int: ...


class CommandView(Protocol):
    """One Kafka-to-MQTT command mapping's counters
    (:class:`bridge.commands.relay.CommandForwarder` has these attributes)."""

    @property
    def published(self) -> int: ...
    @property
    def dead_letters(self) -> int: ...


@dataclass(frozen=True)
class Sources:
    """Where the collector reads, filled in by the daemon.  Every callable must
    return at once and run on the thread that renders (see the module doc).
    An optional source left ``None``, or a spool callable returning None,
    leaves its families out."""

    stats: IngestStats
    mqtt_connected: Callable[[], bool]
    mqtt_reconnects: Callable[[], int]
    mqtt_acks_waiting: Callable[[], int] | None = None
    #: Messages whose records are not all held yet (the delivery machine's count).
    messages_in_flight: Callable[[], int] | None = None
    kafka_state: Callable[[], str] | None = None
    kafka_queue: Callable[[], int] | None = None
    spool: Callable[[], SpoolView | None] | None = None
    spool_available: Callable[[], bool] | None = None
    stream: Callable[[], StreamView] | None = None
    commands: Callable[[], Mapping[str, CommandView]] | None = None
    #: Progress (bridge.console.progress): seconds, None when nothing waits.
    ack_wait: Callable[[], float | None] | None = None
    spool_oldest: Callable[[], float | None] | None = None
    try_refused: Callable[[], Mapping[str, int]] | None = None
    alarms: Callable[[], AlarmView] | None = None
    #: Reloads by result: ``applied``, ``refused``.
    reloads: Callable[[], Mapping[str, int]] | None = None
    # Sparkplug B counters by kind, None while no mapping is sparkplug_b.
    sparkplug: Callable[[], Mapping[str, int] | None] | None = None


def _counter(key: str, value: float | None = None) -> CounterMetricFamily:
    spec = FAMILIES[key]
    return CounterMetricFamily(
        spec.name, spec.help, value=value, labels=spec.labels if value is None else None
    )


def _gauge(key: str, value: float | None = None) -> GaugeMetricFamily:
    spec = FAMILIES[key]
    return GaugeMetricFamily(
        spec.name, spec.help, value=value, labels=spec.labels if value is None else None
    )


def _per_label(key: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    family = _counter(key)
    for label, count in sorted(counts.items()):
        family.add_metric([label], count)
    return family


def latency_buckets(stats: IngestStats) -> list[tuple[str, float]]:
    """``(le, cumulative count)`` pairs ending with ``+Inf``.

    IngestStats counts each observation in one bucket only (the cheapest thing
    to do per message); Prometheus buckets are cumulative, and an observation
    past the last bound exists only in the total, which is the ``+Inf`` bucket.
    """
    cumulative = accumulate(stats.latency_counts)
    pairs: list[tuple[str, float]] = [
        (_bound(bound), count)
        for bound, count in zip(stats.latency_buckets, cumulative, strict=True)
    ]
    pairs.append(("+Inf", stats.latency_total))
    return pairs


def _bound(bound: float) -> str:
    """Bucket bounds written as Prometheus' own clients write them (``1.0``)."""
    return repr(float(bound))


class BridgeCollector:
    """Turns :class:`Sources` into metric families on each scrape."""

    def __init__(self, sources: Sources, version: str) -> None:
        self.sources = sources
        self.version = version

    def collect(self) -> Iterator[Metric]:
        yield from self._ingest()
        yield from self._mqtt()
        yield from self._kafka()
        yield from self._spool()
        yield from self._stream()
        yield from self._commands()
        if self.sources.try_refused is not None:
            yield _per_label("console_try_refused", self.sources.try_refused())
        if self.sources.reloads is not None:
            counts = self.sources.reloads()
            yield _per_label(
                "config_reloads", {result: counts.get(result, 0) for result in RELOAD_RESULTS}
            )
        sparkplug_counts = self.sources.sparkplug() if self.sources.sparkplug is not None else None
        if sparkplug_counts is not None:
            yield _per_label("sparkplug_events", sparkplug_counts)

    def _ingest(self) -> Iterator[Metric]:
        stats = self.sources.stats
        info = _gauge("build_info")
        info.add_metric([self.version], 1)
        yield info
        yield _per_label("mqtt_messages_received", stats.received)
        yield _counter("mqtt_messages_unmatched", stats.unmatched)
        yield _per_label("mqtt_messages_duplicate", stats.duplicates)
        yield _counter("mqtt_messages_acked", stats.acked)
        yield _counter("qos0_records_dropped", stats.dropped_qos0)
        if self.sources.messages_in_flight is not None:
            yield _gauge("messages_in_flight", self.sources.messages_in_flight())
        yield _per_label("kafka_records_produced", stats.produced)
        yield _per_label("dead_letters", stats.dead_letters)
        yield _counter("internal_errors", stats.internal_errors)
        alarms = self.sources.alarms() if self.sources.alarms is not None else None
        if alarms:  # only with alarm rules in the catalog
            yield _gauge("alarm_series", len(alarms))
            yield _counter("alarm_series_evicted", alarms.evicted)
        yield _counter("kafka_delivery_failures", stats.delivery_failures)
        spec = FAMILIES["kafka_delivery_seconds"]
        yield HistogramMetricFamily(
            spec.name, spec.help, buckets=latency_buckets(stats), sum_value=stats.latency_sum
        )

    def _mqtt(self) -> Iterator[Metric]:
        yield _gauge("mqtt_connected", int(self.sources.mqtt_connected()))
        yield _counter("mqtt_reconnects", self.sources.mqtt_reconnects())
        if self.sources.mqtt_acks_waiting is not None:
            yield _gauge("mqtt_acks_waiting", self.sources.mqtt_acks_waiting())

    def _kafka(self) -> Iterator[Metric]:
        if self.sources.kafka_state is not None:
            current = self.sources.kafka_state()
            family = _gauge("kafka_producer_state")
            for state in KAFKA_STATES:
                family.add_metric([state], int(state == current))
            yield family
        if self.sources.kafka_queue is not None:
            yield _gauge("kafka_producer_queue_records", self.sources.kafka_queue())
        if self.sources.ack_wait is not None:
            yield _gauge("kafka_ack_wait_seconds", self.sources.ack_wait() or 0.0)

    def _spool(self) -> Iterator[Metric]:
        stats = self.sources.stats
        if self.sources.spool_available is not None:
            yield _gauge("spool_available", int(self.sources.spool_available()))
            yield _counter("spool_unavailable", stats.spool_unavailable)
        snapshot = self.sources.spool() if self.sources.spool is not None else None
        if snapshot is None:
            return

        yield _gauge("spool_bytes", snapshot.bytes)
        yield _gauge("spool_records", snapshot.records_pending)
        yield _counter("spool_appended_records", stats.spooled)
        yield _counter("spool_drained_records", stats.spool_drained)
        yield _counter("spool_dropped_records", stats.spool_dropped)
        yield _counter("spool_full", stats.spool_full_waits)
        yield _counter("spool_corrupt_records", snapshot.corrupt_total)
        if self.sources.spool_oldest is not None:
            yield _gauge("spool_oldest_record_age_seconds", self.sources.spool_oldest() or 0.0)

    def _stream(self) -> Iterator[Metric]:
        if self.sources.stream is None:
            return
        view = self.sources.stream()
        connections = _gauge("stream_connections")
        for kind, tenants in sorted(view.connections.items()):
            for tenant, count in sorted(tenants.items()):
                connections.add_metric([tenant, kind], count)
        yield connections
        yield _counter("stream_events_dropped", view.events_dropped)
        yield _counter("stream_slow_disconnects", view.slow_disconnects)
        lag = _gauge("consumer_lag")
        for part in view.partitions:
            if part.lag is not None:
                lag.add_metric([part.topic, str(part.partition)], part.lag)
        yield lag

    def _commands(self) -> Iterator[Metric]:
        if self.sources.commands is None:
            return
        published = _counter("commands_published")
        dead = _counter("command_dead_letters")
        for name, counts in sorted(self.sources.commands().items()):
            published.add_metric([name], counts.published)
            dead.add_metric([name], counts.dead_letters)
        yield published
        yield dead


def _version() -> str:
    try:
        return metadata.version("edge-bridge")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_registry(sources: Sources, *, process: bool = True) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one, which would
    also collect whatever an imported library registers there) holding the
    bridge's collector and, with ``process``, the process' CPU, memory and
    file descriptors (read from /proc at scrape time)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BridgeCollector(sources, _version()))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The scrape body and its Content-Type.  ``accept`` is the request's Accept
    header: Prometheus asking for OpenMetrics gets it, anything else gets the
    classic text format (``generate_latest``)."""
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type
