"""The spool writer of store-and-forward against a real spool directory: a
backlog larger than the whole spool is stored as far as it fits, not refused
whole; a full spool is reported to ingest (``refusing``) until an append
succeeds; at shutdown the writer does not wait for room that cannot come.

The Kafka producer is real but never asked to produce (the drain task is not
started), so nothing here needs a broker.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import KafkaSettings
from bridge.core.records import Outgoing
from bridge.io.kafka_producer import KafkaProducer
from bridge.io.spool import Spool
from bridge.stats import IngestStats
from bridge.store_forward import StoreAndForward

SEGMENT = 4096
RECORD_VALUE = 200


class Message:
    """Counts the records of one message reported as stored."""

    def __init__(self) -> None:
        self.stored_records = 0

    def stored(self) -> None:
        self.stored_records += 1


@pytest.fixture
def forwarder(tmp_path: Path) -> StoreAndForward:
    spool = Spool(
        tmp_path / "spool",
        max_bytes=2 * SEGMENT,
        segment_bytes=SEGMENT,
        when_full="backpressure",
    )
    # Nothing listens on port 9; the producer is never used in these tests.
    producer = KafkaProducer(KafkaSettings(bootstrap="127.0.0.1:9"))
    return StoreAndForward(spool, producer, IngestStats(), fsync_interval_s=0)


def record(n: int) -> Outgoing:
    return Outgoing("t", f"k{n}".encode(), b"x" * RECORD_VALUE, [])


async def test_a_backlog_larger_than_the_spool_is_stored_as_far_as_it_fits(
    forwarder: StoreAndForward,
) -> None:
    messages = [Message() for _ in range(100)]  # ~22 KB of frames for an 8 KB spool
    for n, message in enumerate(messages):
        forwarder.put(record(n), message)

    await forwarder.write_queued(wait_for_room=False)

    stored = sum(m.stored_records for m in messages)
    held = forwarder.spool.stats().records_pending
    assert 0 < stored < len(messages)
    assert stored == held, "every record reported stored is in the spool, no more"
    # In order: a prefix is stored, the rest waits.
    assert all(m.stored_records == 1 for m in messages[:stored])
    assert all(m.stored_records == 0 for m in messages[stored:])
    assert forwarder.refusing
    assert not forwarder.idle


async def test_refusing_lasts_until_the_backlog_fits_then_all_is_stored_in_order(
    forwarder: StoreAndForward,
) -> None:
    messages = [Message() for _ in range(100)]
    for n, message in enumerate(messages):
        forwarder.put(record(n), message)
    await forwarder.write_queued(wait_for_room=False)
    assert forwarder.refusing

    keys: list[bytes | None] = []
    while not forwarder.idle:  # play the drain: deliver everything, free the spool
        entries = forwarder.spool.read(1000)
        keys += [entry.record.key for entry in entries]
        forwarder.spool.ack_through(entries[-1].seq)
        await forwarder.write_queued(wait_for_room=False)
    keys += [entry.record.key for entry in forwarder.spool.read(1000)]

    assert not forwarder.refusing
    assert all(m.stored_records == 1 for m in messages)
    assert keys == [f"k{n}".encode() for n in range(100)]
