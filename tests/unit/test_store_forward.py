"""The spool writer of store-and-forward against a real spool directory: a
backlog larger than the whole spool is stored as far as it fits, not refused
whole; a full spool is reported to ingest (``refusing``) until an append
succeeds; at shutdown the writer does not wait for room that cannot come.  A
disk that fails (a file-system layer failing chosen calls) makes the spool
unavailable: held records go back to ingest in order, probes retry with
back-off, and the spool is used again once the disk works.

The Kafka producer is real but never asked to produce (the drain task is not
started), so nothing here needs a broker.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from bridge.core.records import Outgoing
from bridge.core.settings import KafkaSettings
from bridge.ingest.stats import IngestStats
from bridge.ingest.store_forward import StoreAndForward, Waiter
from bridge.io.kafka_producer import KafkaProducer
from bridge.io.spool import Spool
from tests.support import async_wait_until
from tests.unit.test_spool_failures import FailingFs

SEGMENT = 4096
RECORD_VALUE = 200
FAST_RETRY = (0.01, 0.08)


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


class Released:
    """Collects what the forwarder hands back to ingest, in order."""

    def __init__(self) -> None:
        self.keys: list[bytes | None] = []

    def __call__(self, record: Outgoing, _waiter: Waiter) -> None:
        self.keys.append(record.key)


def degradable(tmp_path: Path, fs: FailingFs) -> StoreAndForward:
    spool = Spool(
        tmp_path / "spool",
        max_bytes=2 * SEGMENT,
        segment_bytes=SEGMENT,
        when_full="backpressure",
        fs=fs,
    )
    producer = KafkaProducer(KafkaSettings(bootstrap="127.0.0.1:9"))
    forwarder = StoreAndForward(spool, producer, IngestStats(), fsync_interval_s=0)
    forwarder.retry_s = FAST_RETRY
    return forwarder


async def test_a_failing_disk_hands_held_records_back_in_order_then_recovers(
    tmp_path: Path,
) -> None:
    fs = FailingFs()
    forwarder = degradable(tmp_path, fs)
    released = Released()
    forwarder.on_release = released
    forwarder.activate("test: Kafka is down")
    fs.fail("fdatasync")
    fs.fail("fsync")  # the recovery probe's sync fails too, as on a dying disk
    messages = [Message() for _ in range(10)]
    for n, message in enumerate(messages):
        forwarder.put(record(n), message)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forwarder.run)
            await async_wait_until(lambda: released.keys, 5, "the held records handed back")
            assert released.keys == [f"k{n}".encode() for n in range(10)]
            assert all(m.stored_records == 0 for m in messages), "a failed sync stores nothing"
            assert forwarder.unavailable is not None and "EIO" in forwarder.unavailable
            assert forwarder.refusing and not forwarder.usable and not forwarder.active
            assert forwarder.stats.spool_unavailable == 1
            await async_wait_until(
                lambda: fs.calls["fsync"] >= 3, 5, "several probes failing meanwhile"
            )
            assert forwarder.unavailable is not None
            fs.heal()
            await async_wait_until(
                lambda: forwarder.unavailable is None, 30, "the spool available again"
            )
            assert forwarder.usable and not forwarder.refusing
            forwarder.activate("test: Kafka is down again")
            again = Message()
            forwarder.put(record(10), again)
            await async_wait_until(lambda: again.stored_records, 5, "a record stored again")
            nursery.cancel_scope.cancel()
    events = [e["event"] for e in logs]
    assert events.count("spool.unavailable") == 1, "said once, however many probes failed"
    assert events.count("spool.bypassed") == 1
    assert events.count("spool.available") == 1


async def test_a_spool_that_could_not_be_opened_is_opened_later(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool"
    with Spool(path, max_bytes=2 * SEGMENT, segment_bytes=SEGMENT, when_full="backpressure") as s:
        s.append([record(1)])
        s.sync()  # one record left from an earlier run
    read_only = True
    attempts = 0

    def open_spool() -> Spool:
        nonlocal attempts
        attempts += 1
        if read_only:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return Spool(path, max_bytes=2 * SEGMENT, segment_bytes=SEGMENT, when_full="backpressure")

    producer = KafkaProducer(KafkaSettings(bootstrap="127.0.0.1:9"))
    forwarder = StoreAndForward(
        None,
        producer,
        IngestStats(),
        fsync_interval_s=0,
        open_spool=open_spool,
        unavailable="Read-only file system (EROFS)",
    )
    assert not forwarder.usable and forwarder.refusing
    forwarder.activate("test: Kafka is down")
    assert not forwarder.active, "nothing to route records to"
    forwarder.retry_s = FAST_RETRY
    async with trio.open_nursery() as nursery:
        nursery.start_soon(forwarder.run)
        await async_wait_until(lambda: attempts >= 3, 5, "several attempts to open it")
        assert forwarder.spool is None
        read_only = False
        await async_wait_until(lambda: forwarder.spool is not None, 30, "the spool opened")
        assert forwarder.unavailable is None
        assert forwarder.active, "what the spool holds drains before new records go to Kafka"
        nursery.cancel_scope.cancel()
    forwarder.close()


async def test_a_removed_spool_directory_is_made_again_and_used(tmp_path: Path) -> None:
    path = tmp_path / "spool"

    def open_spool() -> Spool:
        return Spool(path, max_bytes=2 * SEGMENT, segment_bytes=SEGMENT, when_full="backpressure")

    producer = KafkaProducer(KafkaSettings(bootstrap="127.0.0.1:9"))
    forwarder = StoreAndForward(
        open_spool(), producer, IngestStats(), fsync_interval_s=0, open_spool=open_spool
    )
    forwarder.retry_s = FAST_RETRY
    released = Released()
    forwarder.on_release = released
    forwarder.activate("test: Kafka is down")
    shutil.rmtree(path)
    lost = Message()
    forwarder.put(record(0), lost)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forwarder.run)
            await async_wait_until(
                lambda: forwarder.unavailable is None and path.is_dir(), 10, "a new spool directory"
            )
            assert lost.stored_records == 0, "a record in a removed directory is not stored"
            assert released.keys == [b"k0"], "handed to Kafka instead"
            forwarder.activate("test: Kafka is down again")
            kept = Message()
            forwarder.put(record(1), kept)
            await async_wait_until(lambda: kept.stored_records, 5, "a record in the new spool")
            nursery.cancel_scope.cancel()
    forwarder.close()
    unavailable = [e for e in logs if e["event"] == "spool.unavailable"]
    assert "removed" in unavailable[0]["reason"]
    with open_spool() as reopened:
        assert reopened.stats().records_pending == 1
