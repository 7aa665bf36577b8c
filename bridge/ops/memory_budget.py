"""The daemon's worst-case memory, worked out from its settings.

Every buffer the daemon keeps is bounded by a setting, so its memory has an
upper bound that can be computed before it runs: :func:`memory_budget`.  The
parts (docs/operations.md has the formula in words):

* ``baseline``: the interpreter, the libraries and librdkafka's handles with
  their connection buffers, measured at a load the daemon sustains.
* ``kafka_consumers``: what each Kafka consumer may prefetch (the stream's,
  one per ``[[streams]]`` endpoint, up to ``stream.replay_concurrency``
  replays, one per command mapping): librdkafka's queue,
  ``queued.max.messages.kbytes``, plus one fetch response in flight,
  ``fetch.max.bytes``, plus librdkafka's bookkeeping per queued record.
  :data:`bridge.io.kafka_config.CONSUMER_PREFETCH` bounds these in bytes;
  librdkafka's own defaults (64 MiB queued and 50 MiB per fetch, per
  consumer) are what made a stream that fell behind a saturated ingest grow
  the daemon past 300 MiB.
* ``mqtt_backlog``: the messages read from the broker and not yet
  acknowledged: the bridge reads nothing more while ``mqtt.receive_maximum``
  wait (bridge.io.mqtt), so at most that many plus one read
  (:data:`RECV_BYTES` of packets of at least :data:`MIN_PUBLISH_BYTES`),
  each with its Python bookkeeping.
* ``producer_queue``: those messages' records, ``records_per_message`` each,
  in librdkafka's producer queue (or the ingest's overflow when it is full),
  with librdkafka's bookkeeping, at most ``queue.buffering.max.kbytes`` of
  their bytes when that is set lower.  Nothing else fills it but the spool's
  drain, counted under ``spool``: ``kafka.queue_max_messages`` is no longer
  what bounds it.
* ``allocator_slack``: a live consumer reading compressed batches (the
  stream's, unless ``stream.source = "local"``) leaves glibc's heap of its
  librdkafka thread fragmented, the decompressed batches being freed out of
  order: up to :data:`COMPRESSED_READ_SLACK_BYTES` each, measured.  Counted
  when ``kafka.compression`` is not ``none``, since the records it reads are
  the ones this daemon compressed.
* ``client_queues``: ``stream.client_queue`` events for each client, for
  ``stream.max_per_tenant`` clients per tenant; an event is held as its
  envelope, its WebSocket text and its SSE frame.  The tenants are those of
  the device registry, or the ``tenants`` argument when there is none.
* ``normalizer_caches``, ``dedup``, ``alarms``: the per-topic and
  per-identity caches (bridge/core/normalize.py), the remembered event ids
  and the alarm series, each bounded by its entry count.
* ``local_memory``: the records the hub delivered itself in edge-local mode,
  remembered to recognise their copies from Kafka.
* ``spool``: one drain batch read back from disk and one scan chunk.

Sizes per entry are measured (tracemalloc, librdkafka's statistics) and are
approximations; ``record_bytes`` is the size of an average Kafka record
(value, key and headers), 512 by default against the bench's 300.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from bridge.core.normalize import CACHE_ENTRIES
from bridge.core.settings import Config
from bridge.ingest.store_forward import DRAIN_BATCH
from bridge.io.kafka_config import CONSUMER_PREFETCH
from bridge.io.mqtt import RECV_BYTES
from bridge.stream.hub import LOCAL_MEMORY

MIB = 1 << 20

#: RSS of the daemon at a steady 10,000 msgs/s, stream and spool on
#: (docs/benchmarks.md): interpreter, libraries, librdkafka's handles.
BASELINE_BYTES = 64 * MIB
#: librdkafka's bookkeeping per queued record (rd_kafka_msg_t or the
#: consumer's op and message), beside its bytes.
LIBRDKAFKA_RECORD_BYTES = 256
#: librdkafka's default producer bound in KiB (``queue.buffering.max.kbytes``).
PRODUCER_DEFAULT_KBYTES = 1_048_576
#: The smallest QoS 1 PUBLISH that makes records, for the count of messages
#: one read may bring beyond ``receive_maximum``: a short topic matching a
#: mapping and a payload of a few bytes.
MIN_PUBLISH_BYTES = 64
#: A message waiting for Kafka, beside its payload: the decoded packet, its
#: topic, the delivery bookkeeping and callback (tracemalloc, the default
#: mapping).
MESSAGE_BYTES = 600
#: glibc's heap of a librdkafka consumer thread that decompresses batches at
#: a saturated ingest: two heaps of 63 and 29 MiB measured with the stream
#: reading lz4 batches back (malloc_trim returned 64 MiB of it at once);
#: with ``kafka.compression = "none"`` none of it (docs/benchmarks.md).
COMPRESSED_READ_SLACK_BYTES = 96 * MIB
#: Per device: its route and identity (a raw-only mapping: route, identity
#: and the raw look-up), 1,050-1,160 bytes measured with tracemalloc
#: (tests/unit/test_normalize_caches.py holds the caches to it).
CACHE_ENTRY_BYTES = 1300
DEDUP_ENTRY_BYTES = 200
ALARM_SERIES_BYTES = 400
#: The spool's read-ahead when it scans a segment (bridge/io/spool.py).
SPOOL_SCAN_BYTES = 1 << 20
#: An event's envelope adds about this much to the record it carries.
ENVELOPE_BYTES = 160


@dataclass(frozen=True)
class MemoryBudget:
    """The worst case, part by part, in bytes."""

    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        """One line: the total and each part, in MiB."""
        shown = ", ".join(f"{name} {size / MIB:.1f}" for name, size in self.parts.items() if size)
        return f"{self.total / MIB:.0f} MiB ({shown})"


def _effective(config: Config, defaults: dict[str, int], *, stream: bool) -> dict[str, int]:
    """``defaults`` as overridden by ``kafka.properties`` (and the stream's own
    ``consumer_properties``), the way the consumers build their settings."""
    merged = dict(defaults)
    overrides = dict(config.kafka.properties)
    if stream:
        overrides.update(config.stream.consumer_properties)
    for name in defaults:
        if name in overrides:
            # A value that is no number is refused by librdkafka at start.
            with contextlib.suppress(ValueError):
                merged[name] = int(overrides[name])
    return merged


def _consumer_bytes(settings: dict[str, int], record_bytes: int) -> int:
    queued = settings["queued.max.messages.kbytes"] * 1024
    in_flight = settings["fetch.max.bytes"]
    records = (queued + in_flight) // max(1, record_bytes)
    return queued + in_flight + records * LIBRDKAFKA_RECORD_BYTES


def memory_budget(
    config: Config, *, record_bytes: int = 512, records_per_message: int = 3, tenants: int = 1
) -> MemoryBudget:
    """The worst-case memory of a daemon running ``config``, for messages of
    ``records_per_message`` records (3 with the default mapping and two
    metrics) of ``record_bytes`` on average."""
    stream = config.stream
    consumer = _consumer_bytes(_effective(config, CONSUMER_PREFETCH, stream=True), record_bytes)
    live = len(config.streams) + (stream.source != "local")
    consumers = stream.replay_concurrency + live
    commands = _consumer_bytes(_effective(config, CONSUMER_PREFETCH, stream=False), record_bytes)

    backlog = config.mqtt.receive_maximum + RECV_BYTES // MIN_PUBLISH_BYTES
    kbytes = {"queue.buffering.max.kbytes": PRODUCER_DEFAULT_KBYTES}
    producer = _effective(config, kbytes, stream=False)
    queued = backlog * records_per_message
    producer_bytes = min(queued * record_bytes, producer["queue.buffering.max.kbytes"] * 1024)

    clients = stream.max_per_tenant * max(tenants, len(config.devices), 1)
    event_bytes = 3 * (record_bytes + ENVELOPE_BYTES)

    limits = config.limits
    alarm_rules = any(spec.alarms for spec in config.metrics.values())
    dedup = sum(m.dedup.max_entries for m in config.mappings if m.dedup is not None)
    spool = 0
    if config.spool.enabled:
        spool = DRAIN_BATCH * (record_bytes + LIBRDKAFKA_RECORD_BYTES) + SPOOL_SCAN_BYTES

    return MemoryBudget(
        {
            "baseline": BASELINE_BYTES,
            "kafka_consumers": consumers * consumer + len(config.commands) * commands,
            "mqtt_backlog": backlog * (MESSAGE_BYTES + record_bytes),
            "producer_queue": producer_bytes + queued * LIBRDKAFKA_RECORD_BYTES,
            "allocator_slack": (
                live * COMPRESSED_READ_SLACK_BYTES if config.kafka.compression != "none" else 0
            ),
            "client_queues": stream.client_queue * clients * event_bytes,
            "normalizer_caches": CACHE_ENTRIES * CACHE_ENTRY_BYTES,
            "dedup": dedup * DEDUP_ENTRY_BYTES,
            "alarms": limits.max_alarm_series * ALARM_SERIES_BYTES if alarm_rules else 0,
            "local_memory": LOCAL_MEMORY * 2 * record_bytes if stream.source == "auto" else 0,
            "spool": spool,
        }
    )
