"""The spool writer of store-and-forward against a real spool directory, with
the real ingest path as what it reports to (its delivery machine decides): a
backlog larger than the whole spool is stored as far as it fits, not refused
whole; a full spool refuses records (QoS 0 is dropped) until an append
succeeds; at shutdown the writer does not wait for room that cannot come.  A
disk that fails (a file-system layer failing chosen calls) makes the spool
unavailable: the records waiting for it go to Kafka in order, probes retry
with back-off, and the spool is used again once the disk works.

The spool's Kafka producer is real but never asked to produce (nothing drains
but an empty spool, or one whose broker never answers), and ingest's producer
only records what it is handed, so nothing here needs a broker.  A message
counts as stored once it is acknowledged: each one makes one record.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from bridge.core.delivery import Message, Tracked
from bridge.core.normalize import Normalizer
from bridge.core.records import Outgoing
from bridge.core.settings import KafkaSettings
from bridge.ingest.pipeline import Ingest, PendingMessage
from bridge.ingest.stats import IngestStats
from bridge.ingest.store_forward import SpoolIntake, StoreAndForward
from bridge.io.kafka_producer import DeliveryWaiter, KafkaProducer
from bridge.io.spool import Spool
from tests.support import async_wait_until
from tests.unit.core_fixtures import MAPPINGS, plan_from
from tests.unit.test_spool_failures import FailingFs

SEGMENT = 4096
RECORD_VALUE = 200
FAST_RETRY = (0.01, 0.08)


class Session:
    """The MQTT client as ingest sees it: the acknowledged message ids."""

    connected = True

    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, generation: int, mid: int) -> None:
        self.acked.append(mid)

    def flush_writes(self) -> None:
        pass

    def publish(self, topic: str, payload: bytes, *, qos: int) -> None:
        raise AssertionError("nothing to publish")


class Released:
    """Ingest's producer: takes every record and collects its key, in order
    (what the machine handed to Kafka instead of the spool)."""

    def __init__(self) -> None:
        self.keys: list[bytes | None] = []

    def produce(self, record: Outgoing, _waiter: DeliveryWaiter | None) -> bool:
        self.keys.append(record.key)
        return True


class Bridge:
    """Ingest, its spool and what they did."""

    def __init__(
        self,
        spool: Spool | None,
        open_spool: Callable[[], Spool] | None = None,
        unavailable: str | None = None,
    ) -> None:
        self.session = Session()
        self.released = Released()
        self.intake: SpoolIntake[Tracked[Outgoing]] = SpoolIntake()
        normalizer = Normalizer(plan_from(MAPPINGS / "telemetry.toml"))
        stats = IngestStats()
        self.ingest = Ingest(normalizer, self.released, stats, self.session, spool=self.intake)
        self.delivery = self.ingest.delivery
        # Nothing listens on port 9.
        producer = KafkaProducer(KafkaSettings(bootstrap="127.0.0.1:9"))
        self.forwarder = StoreAndForward(
            spool,
            producer,
            stats,
            self.intake,
            self.ingest,
            fsync_interval_s=0,
            open_spool=open_spool,
            unavailable=unavailable,
        )
        self.forwarder.retry_s = FAST_RETRY

    def send(self, n: int) -> None:
        """Message ``n``, QoS 1, of one record keyed ``k<n>``."""
        ingest = self.ingest
        actions = self.delivery.arrive(PendingMessage(ingest, 1, n, None), [record(n)])
        assert actions is not None, "while the spool is active, nothing goes direct"
        ingest.carry_out(actions)

    def stored(self, n: int) -> bool:
        return n in self.session.acked


@pytest.fixture
def bridge(tmp_path: Path) -> Bridge:
    spool = Spool(
        tmp_path / "spool",
        max_bytes=2 * SEGMENT,
        segment_bytes=SEGMENT,
        when_full="backpressure",
    )
    bridge = Bridge(spool)
    bridge.ingest.kafka_state("down")
    return bridge


def record(n: int) -> Outgoing:
    return Outgoing("t", f"k{n}".encode(), b"x" * RECORD_VALUE, [])


async def test_a_backlog_larger_than_the_spool_is_stored_as_far_as_it_fits(
    bridge: Bridge,
) -> None:
    messages = range(100)  # ~22 KB of frames for an 8 KB spool
    for n in messages:
        bridge.send(n)

    await bridge.forwarder.write_queued(wait_for_room=False)

    stored = len(bridge.session.acked)
    assert bridge.forwarder.spool is not None
    held = bridge.forwarder.spool.stats().records_pending
    assert 0 < stored < len(messages)
    assert stored == held, "every record reported stored is in the spool, no more"
    # In order: a prefix is stored, the rest waits.
    assert all(bridge.stored(n) for n in messages[:stored])
    assert not any(bridge.stored(n) for n in messages[stored:])
    assert bridge.delivery.refusing
    assert bridge.intake


async def test_refusing_lasts_until_the_backlog_fits_then_all_is_stored_in_order(
    bridge: Bridge,
) -> None:
    messages = range(100)
    for n in messages:
        bridge.send(n)
    forwarder = bridge.forwarder
    assert forwarder.spool is not None
    await forwarder.write_queued(wait_for_room=False)
    assert bridge.delivery.refusing

    keys: list[bytes | None] = []
    while bridge.intake:  # play the drain: deliver everything, free the spool
        entries = forwarder.spool.read(1000)
        keys += [entry.record.key for entry in entries]
        forwarder.spool.ack_through(entries[-1].seq)
        await forwarder.write_queued(wait_for_room=False)
    keys += [entry.record.key for entry in forwarder.spool.read(1000)]

    assert not bridge.delivery.refusing
    assert all(bridge.stored(n) for n in messages)
    assert keys == [f"k{n}".encode() for n in range(100)]


def degradable(tmp_path: Path, fs: FailingFs) -> Bridge:
    spool = Spool(
        tmp_path / "spool",
        max_bytes=2 * SEGMENT,
        segment_bytes=SEGMENT,
        when_full="backpressure",
        fs=fs,
    )
    return Bridge(spool)


async def test_a_failing_disk_hands_held_records_back_in_order_then_recovers(
    tmp_path: Path,
) -> None:
    fs = FailingFs()
    bridge = degradable(tmp_path, fs)
    forwarder, delivery, released = bridge.forwarder, bridge.delivery, bridge.released
    bridge.ingest.kafka_state("down")
    fs.fail("fdatasync")
    fs.fail("fsync")  # the recovery probe's sync fails too, as on a dying disk
    messages = range(10)
    for n in messages:
        bridge.send(n)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forwarder.run)
            await async_wait_until(lambda: released.keys, 5, "the held records handed back")
            assert released.keys == [f"k{n}".encode() for n in range(10)]
            assert not any(bridge.stored(n) for n in messages), "a failed sync stores nothing"
            assert forwarder.unavailable is not None and "EIO" in forwarder.unavailable
            assert delivery.refusing and not delivery.usable and not delivery.active
            assert forwarder.stats.spool_unavailable == 1
            await async_wait_until(
                lambda: fs.calls["fsync"] >= 3, 5, "several probes failing meanwhile"
            )
            assert forwarder.unavailable is not None
            fs.heal()
            await async_wait_until(
                lambda: forwarder.unavailable is None, 30, "the spool available again"
            )
            assert delivery.usable and not delivery.refusing
            # Kafka is still down: the spool took over again as soon as it could.
            assert delivery.active
            bridge.send(10)
            await async_wait_until(lambda: bridge.stored(10), 5, "a record stored again")
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

    bridge = Bridge(None, open_spool=open_spool, unavailable="Read-only file system (EROFS)")
    forwarder, delivery = bridge.forwarder, bridge.delivery
    assert not delivery.usable and delivery.refusing
    bridge.ingest.kafka_state("down")
    assert not delivery.active, "nothing to route records to"
    bridge.ingest.kafka_state("up")  # what follows is the backlog's doing alone
    async with trio.open_nursery() as nursery:
        nursery.start_soon(forwarder.run)
        await async_wait_until(lambda: attempts >= 3, 5, "several attempts to open it")
        assert forwarder.spool is None
        read_only = False
        await async_wait_until(lambda: forwarder.spool is not None, 30, "the spool opened")
        assert forwarder.unavailable is None
        assert delivery.active, "what the spool holds drains before new records go to Kafka"
        nursery.cancel_scope.cancel()
    forwarder.close()


async def test_a_removed_spool_directory_is_made_again_and_used(tmp_path: Path) -> None:
    path = tmp_path / "spool"

    def open_spool() -> Spool:
        return Spool(path, max_bytes=2 * SEGMENT, segment_bytes=SEGMENT, when_full="backpressure")

    bridge = Bridge(open_spool(), open_spool=open_spool)
    forwarder, released = bridge.forwarder, bridge.released
    bridge.ingest.kafka_state("down")
    shutil.rmtree(path)
    bridge.send(0)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forwarder.run)
            await async_wait_until(
                lambda: forwarder.unavailable is None and path.is_dir(), 10, "a new spool directory"
            )
            assert not bridge.stored(0), "a record in a removed directory is not stored"
            assert released.keys == [b"k0"], "handed to Kafka instead"
            bridge.send(1)
            await async_wait_until(lambda: bridge.stored(1), 5, "a record in the new spool")
            nursery.cancel_scope.cancel()
    forwarder.close()
    unavailable = [e for e in logs if e["event"] == "spool.unavailable"]
    assert "removed" in unavailable[0]["reason"]
    with open_spool() as reopened:
        assert reopened.stats().records_pending == 1


def test_a_pending_message_is_a_whole_message() -> None:
    """A PendingMessage starts as a Message does: every field of Message has
    its initial value, so an initialiser that skipped one fails here, not in
    the delivery machine."""
    normalizer = Normalizer(plan_from(MAPPINGS / "telemetry.toml"))
    producer = KafkaProducer(KafkaSettings(bootstrap="127.0.0.1:9"))  # never produces here
    ingest = Ingest(normalizer, producer, IngestStats(), Session())
    pending = PendingMessage(ingest, 4, 17, None)
    plain = Message(4, 17)
    # A compiled Message (setup.py) lists its fields in mypyc's own attribute.
    fields = getattr(Message, "__slots__", None) or Message.__mypyc_attrs__  # type: ignore[attr-defined]
    assert "remaining" in fields
    assert {slot: getattr(pending, slot) for slot in fields} == {
        slot: getattr(plain, slot) for slot in fields
    }
