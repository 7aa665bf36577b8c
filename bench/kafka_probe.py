"""The measuring end: a process that counts and times records on Kafka.

Throughput is counted on Kafka, never at the publisher: a message counts once
its raw record is in the topic.  The bridge produces a message's raw and clean
records in the same batch and acknowledges the MQTT message only when all are
delivered, so the raw topic holds one record per message.  Its record count is
the sum of its partitions' end offsets (ListOffsets), asked for every
``COUNT_INTERVAL_S``: nothing is read for it.  Tansu's answer trails the
true end by up to the last produced batch per partition (the brief's "stale
ListOffsets"), a constant offset that cancels out of a rate; the closed loop's
window is large against it.  Not more often: Tansu's
ListOffsets costs time proportional to the data it holds (at 30k records/s a
query every millisecond took Tansu from 0.1 to 0.85 cores within 20 s,
measured).  After a run, :func:`count_records` reads the topic back from the
beginning for the exact check (loss or duplicates at QoS 1).

Latency, in latency mode, is read from each raw record: ``sent_ns`` (the
publisher's wall clock in the payload) against the record's Kafka timestamp,
which the bridge's producer sets when it hands the record over (CreateTime, in
milliseconds, cut down, so each latency is taken to the middle of its
millisecond: ±0.5 ms; Tansu keeps it and has no LogAppendTime).  That is the bridge's
own delay up to the Kafka client, without the broker's acknowledgement; the
bridge's histogram of receive-to-acknowledgement covers that part
(bench/ingest.py).  The moment a consumer receives a record is no measure on
Tansu: it answers a fetch only after an internal wait (25-55 ms measured with
``fetch.wait.max.ms`` 5).
"""

from __future__ import annotations

import time
import uuid
from array import array
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import NamedTuple

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    Consumer,
    KafkaError,
    Message,
    TopicPartition,
)

from bench.mqtt_load import sent_ns_of

_TRANSIENT = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})
#: Half of a Kafka timestamp's resolution: added to take a sample to the middle of its millisecond.
HALF_MS_NS = 500_000
#: How often the count of records on Kafka is refreshed.
COUNT_INTERVAL_S = 0.25


def _consumer(bootstrap: str, *, batched: bool = False) -> Consumer:
    """A reader.  ``batched`` asks Tansu for few, large fetches: its cost per
    fetch grows with the data it holds (one consumer reading along at 30k
    records/s took it from 0.15 to 0.95 cores within 20 s, measured), and the
    latency read from record timestamps does not depend on when they arrive."""
    conf: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-probe-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
    }
    if batched:
        conf |= {"fetch.wait.max.ms": 500, "fetch.min.bytes": 1 << 20}
    return Consumer(conf)


def _partitions(consumer: Consumer, topic: str, stop: Synchronized[int]) -> list[int]:
    while not stop.value:
        found = consumer.list_topics(topic, timeout=1.0).topics.get(topic)
        if found is not None and found.error is None and found.partitions:
            return sorted(found.partitions)
        time.sleep(0.05)
    return []


def _on_kafka(consumer: Consumer, ends: list[TopicPartition]) -> int:
    """Records in the topic: the sum of its partitions' end offsets."""
    total = 0
    for end in ends:
        _, high = consumer.get_watermark_offsets(end, timeout=2, cached=False)
        total += high
    return total


def run_probe(
    bootstrap: str,
    topic: str,
    delivered: Synchronized[int],
    stop: Synchronized[int],
    latency_from_ns: Synchronized[int],
    *,
    results: Connection,
    watch_latency: bool,
) -> None:
    """Keep ``delivered`` at the number of records in ``topic`` until ``stop``.

    With ``watch_latency``, records published while ``latency_from_ns`` is
    non-zero and at or after it are also read and timed; the array of
    nanoseconds (publish to record timestamp) goes to ``results``.
    """
    consumer = _consumer(bootstrap, batched=True)
    to_timestamp = array("q")
    try:
        partitions = _partitions(consumer, topic, stop)
        ends = [TopicPartition(topic, p) for p in partitions]
        if watch_latency:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        next_count = 0.0
        while not stop.value:
            if watch_latency:
                batch = consumer.consume(num_messages=5000, timeout=0.02)
                _time(batch, latency_from_ns.value, to_timestamp)
            else:
                time.sleep(0.02)
            if time.monotonic() >= next_count:
                delivered.value = _on_kafka(consumer, ends)
                next_count = time.monotonic() + COUNT_INTERVAL_S
    finally:
        consumer.close()
        results.send(to_timestamp.tobytes())


def _time(batch: list[Message], since: int, to_timestamp: array[int]) -> None:
    """Note the latencies of one consumed batch (records sent after ``since``)."""
    for message in batch:
        error = message.error()
        if error is not None:
            if error.code() not in _TRANSIENT:
                raise RuntimeError(f"reading {message.topic()}: {error}")
            continue
        if not since:
            continue
        sent = sent_ns_of(message.value() or b"")
        if sent >= since:
            kind, stamp_ms = message.timestamp()
            if kind == TIMESTAMP_CREATE_TIME:
                # The stamp is the hand-over time cut down to whole milliseconds:
                # the midpoint of that millisecond is the unbiased estimate (±0.5 ms).
                to_timestamp.append(stamp_ms * 1_000_000 + HALF_MS_NS - sent)


class Readback(NamedTuple):
    """A topic read back from its beginning."""

    records: int  # records read
    # Offsets passed over between the first and the last record read in each
    # partition: 0 on a topic written without transactions or compaction.  A
    # shortfall with none skipped is records never written (or never given
    # an offset); with some skipped, records the broker assigned offsets to
    # and did not serve.
    skipped: int


def count_records(bootstrap: str, topic: str, at_least: int, timeout: float) -> Readback:
    """Read ``topic`` from the beginning and count its records: until there are
    ``at_least`` (and half a second more, to see duplicates) or ``timeout``.
    The exact check behind a QoS 1 result, independent of end offsets."""
    consumer = _consumer(bootstrap)
    deadline = time.monotonic() + timeout
    # partition -> (first offset, last offset, records) read
    spans: dict[int, tuple[int, int, int]] = {}
    try:
        found = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in found.partitions])
        count = 0
        grace_until = None
        while time.monotonic() < (grace_until or deadline):
            for message in consumer.consume(num_messages=10_000, timeout=0.1):
                if message.error() is None:
                    count += 1
                    note_offset(spans, message.partition() or 0, message.offset() or 0)
            if grace_until is None and count >= at_least:
                grace_until = time.monotonic() + 0.5
        return Readback(count, skipped_offsets(spans))
    finally:
        consumer.close()


def note_offset(spans: dict[int, tuple[int, int, int]], partition: int, offset: int) -> None:
    """Widen ``partition``'s span (first offset, last offset, records read) by one record."""
    first, last, read = spans.get(partition, (offset, offset, 0))
    spans[partition] = (min(first, offset), max(last, offset), read + 1)


def skipped_offsets(spans: dict[int, tuple[int, int, int]]) -> int:
    """Offsets within the spans that no record read had."""
    return sum(last - first + 1 - read for first, last, read in spans.values())
