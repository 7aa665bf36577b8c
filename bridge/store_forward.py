"""Store-and-forward: when Kafka cannot take records, the disk spool does.

Records normally go straight to the Kafka producer.  The spool takes over when
Kafka is unreachable (librdkafka reports all brokers down), too slow (a record
is not acknowledged within ``kafka.delivery_timeout_ms``) or the producer queue
is full.  From then on the forwarder is *active*: every new record is appended
to the spool, behind the ones already there, so records of one key stay in
order, and a drain task produces the spool's records to Kafka in append order
while new traffic keeps arriving.  When the drain has emptied the spool, the
forwarder turns inactive and records go straight to Kafka again.

Acknowledgement: a spooled record counts as delivered for its MQTT message once
the ``sync()`` covering it has returned (``fsync``).  Appends are grouped: the
writer waits ``spool.fsync_interval_ms`` after the first queued record, then
appends and syncs everything queued in one worker-thread call.

When the spool is full, ``spool.when_full`` decides.  ``backpressure`` (the
default): what still fits is stored, the rest stays in memory, unacknowledged,
and is retried whenever the drain frees space; the MQTT broker stops sending
once the client's in-flight window is full, and keeps the backlog (QoS 0
records, which nothing holds back, are dropped and counted by ingest while the
spool refuses: see :attr:`StoreAndForward.refusing`).  ``drop_oldest``: the
spool deletes its oldest segment, the records lost are counted and logged as
an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import structlog
import trio

from bridge.core.records import Outgoing
from bridge.io.kafka_producer import KafkaProducer
from bridge.io.spool import Spool, SpoolEntry, SpoolFull
from bridge.stats import IngestStats

if TYPE_CHECKING:
    from collections.abc import Callable

log = structlog.get_logger(__name__)

DRAIN_BATCH = 2000
RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0


class Waiter(Protocol):
    """An MQTT message's bookkeeping: told when one of its records is stored."""

    def stored(self) -> None: ...


class _DrainBatch:
    """The delivery reports of one round of spooled records produced to Kafka:
    which of them failed, and when every report is in."""

    def __init__(self, size: int) -> None:
        self.outstanding = size
        self.failed: list[SpoolEntry] = []
        self.done = trio.Event()

    def report(self, entry: SpoolEntry, error: Any) -> None:
        if error is not None:
            self.failed.append(entry)
        self.outstanding -= 1
        if self.outstanding == 0:
            self.done.set()


class _DrainRecord:
    """Delivery waiter for one spooled record: tells its batch how it went."""

    __slots__ = ("batch", "entry")

    def __init__(self, batch: _DrainBatch, entry: SpoolEntry) -> None:
        self.batch = batch
        self.entry = entry

    def delivered(self, error: Any, _message: Any) -> None:
        self.batch.report(self.entry, error)


class StoreAndForward:
    """Owns the spool, the decision to use it, and the writer and drain tasks."""

    def __init__(
        self,
        spool: Spool,
        producer: KafkaProducer,
        stats: IngestStats,
        *,
        fsync_interval_s: float,
    ) -> None:
        self.spool = spool
        self.producer = producer
        self.stats = stats
        self.fsync_interval_s = fsync_interval_s
        self.active = spool.stats().records_pending > 0
        self._queue: list[tuple[Outgoing, Waiter]] = []
        self._queued = trio.Event()
        self._stored = trio.Event()  # something new in the spool: wake the drain
        self._freed = trio.Event()  # the drain deleted segments: retry a full spool
        self._writing = False
        # True from a refused append (backpressure: the spool is full) until
        # an append succeeds again; ingest drops QoS 0 records meanwhile.
        self.refusing = False
        self.on_written: Callable[[], None] | None = None
        if self.active:
            log.info("spool.pending_at_start", records=spool.stats().records_pending)
            self._stored.set()

    # ------------------------------------------------------------------ trio side, sync
    def activate(self, reason: str) -> None:
        """Route new records to the spool (Kafka is down, slow, or full)."""
        if not self.active:
            self.active = True
            log.warning("spool.active", reason=reason)

    def put(self, record: Outgoing, waiter: Waiter) -> None:
        """Queue a record for the next grouped append."""
        self._queue.append((record, waiter))
        self._queued.set()

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing being written."""
        return not self._queue and not self._writing

    # ------------------------------------------------------------------ tasks
    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer)
            nursery.start_soon(self._drainer)

    async def _writer(self) -> None:
        while True:
            await self._queued.wait()
            await trio.sleep(self.fsync_interval_s)  # group commit window
            await self.write_queued()

    async def write_queued(self, *, wait_for_room: bool = True) -> None:
        """Append and sync everything queued now; tell each waiter once it is on disk.

        When the spool is full (backpressure), wait for the drain to free space,
        or, with ``wait_for_room=False`` (shutdown: Kafka is not taking records,
        so no space is coming), return with the rest unstored: those messages
        stay unacknowledged and the MQTT broker delivers them again later.
        """
        while self._queue:
            batch, self._queue = self._queue, []
            self._queued = trio.Event()
            # Armed before the append: space the drain frees meanwhile counts.
            self._freed = trio.Event()
            self._writing = True
            stored, dropped, full = await trio.to_thread.run_sync(self._append_and_sync, batch)
            self._writing = False
            self.refusing = full is not None
            if full is not None:
                self._queue[:0] = batch[stored:]
                batch = batch[:stored]
                self.stats.spool_full_waits += 1
                log.error(
                    "spool.full",
                    error=str(full),
                    held_records=len(self._queue),
                    hint="MQTT acknowledgements wait until the drain frees space",
                )
            if dropped:
                self.stats.spool_dropped += dropped
                log.error(
                    "spool.dropped_oldest",
                    records=dropped,
                    hint="the spool is full and when_full = drop_oldest; raise spool.max_bytes",
                )
            for _, waiter in batch:
                waiter.stored()
            if batch:
                self._stored.set()
                if self.on_written is not None:
                    self.on_written()
            if full is not None:
                if not wait_for_room:
                    return
                await self._freed.wait()

    def _append_and_sync(
        self, batch: list[tuple[Outgoing, Waiter]]
    ) -> tuple[int, int, SpoolFull | None]:
        """Worker thread: append the batch, in order, and fsync once.

        Returns how many records (from the front) are stored, how many older
        records ``drop_oldest`` deleted for them, and the refusal that stopped
        the rest.  The spool takes an append whole or not at all, so a batch
        that does not fit is split (halved until a part fits): what the free
        space holds is stored and acknowledged now, the rest waits for the
        drain.  Without the split, a backlog queued while the spool was full
        could outgrow ``max_bytes`` itself and never be written at all.
        """
        records = [record for record, _ in batch]
        stored = dropped = 0
        size = len(records)
        full: SpoolFull | None = None
        while stored < len(records):
            part = records[stored : stored + size]
            try:
                dropped += self.spool.append(part).dropped
            except SpoolFull as exc:
                if size == 1:
                    full = exc
                    break
                size //= 2
                continue
            stored += len(part)
        if stored:
            self.spool.sync()
        return stored, dropped, full

    async def _drainer(self) -> None:
        while True:
            await self._stored.wait()
            entries: list[SpoolEntry] = await trio.to_thread.run_sync(self.spool.read, DRAIN_BATCH)
            if not entries:
                self._stored = trio.Event()
                if self.idle and self.active:
                    self.active = False
                    log.info("spool.drained", hint="records go straight to Kafka again")
                continue
            await self._produce(entries)
            await trio.to_thread.run_sync(self.spool.ack_through, entries[-1].seq)
            self.stats.spool_drained += len(entries)
            self._freed.set()

    async def _produce(self, entries: list[SpoolEntry]) -> None:
        """Produce one read batch until every record has landed.  Only the
        records whose delivery failed are produced again, with backoff: the
        ones Kafka took are not written twice (a partly failed batch, say one
        partition's leader failing, used to send the whole batch again)."""
        delay = RETRY_MIN_S
        while True:
            batch = _DrainBatch(len(entries))
            for entry in entries:
                while not self.producer.produce(entry.record, _DrainRecord(batch, entry)):
                    await trio.sleep(0.01)  # librdkafka's queue is full: let it drain
            await batch.done.wait()
            if not batch.failed:
                return
            log.warning("spool.drain_failed", failed=len(batch.failed), retry_in_s=delay)
            entries = batch.failed
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
