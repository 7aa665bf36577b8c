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

When the spool's disk fails (full, read-only, I/O errors, the directory
removed) or the spool cannot be opened at all, the forwarder marks it
*unavailable*: ``spool.unavailable`` is logged once with the reason, records
waiting for it stay in memory unacknowledged (QoS 0 records are dropped and
counted, as for a full spool), and a recovery task probes the disk with
back-off (``RETRY_MIN_S`` doubling to ``RETRY_MAX_S``), opening the spool again
where it never opened or its directory vanished.  Records already in the spool
keep draining.  Once nothing readable is left in it, the held records go to
Kafka in order (:attr:`StoreAndForward.on_release`), and the forwarder stays
out of the way: with the spool unavailable and nothing in it, ingest sends
straight to Kafka as without a spool, so a full disk never stops ingest while
Kafka is reachable.  When the probe succeeds, ``spool.available`` is logged and
the spool takes records again.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any, Protocol

import structlog
import trio

from bridge.core.records import Outgoing
from bridge.ingest.stats import IngestStats
from bridge.io.kafka_producer import KafkaProducer
from bridge.io.spool import Spool, SpoolEntry, SpoolError, SpoolFull, SpoolUnavailable, describe

log = structlog.get_logger(__name__)

DRAIN_BATCH = 2000
RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0
READ_ONLY = describe(OSError(errno.EROFS, os.strerror(errno.EROFS)))
"""Why a spool opened read-only is unavailable."""


class Waiter(Protocol):
    """An MQTT message's bookkeeping: told when one of its records is stored."""

    def stored(self) -> None: ...


Held = tuple[Outgoing, Waiter]


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
    """Owns the spool, the decision to use it, and the writer, drain and
    recovery tasks.

    ``spool`` None: it could not be opened (``unavailable`` says why);
    ``open_spool`` opens it (again), for the recovery task.
    """

    def __init__(
        self,
        spool: Spool | None,
        producer: KafkaProducer,
        stats: IngestStats,
        *,
        fsync_interval_s: float,
        open_spool: Callable[[], Spool] | None = None,
        unavailable: str | None = None,
    ) -> None:
        self.spool = spool
        self.producer = producer
        self.stats = stats
        self.fsync_interval_s = fsync_interval_s
        self.open_spool = open_spool
        # The recovery task's back-off, from min doubling to max (tests shorten it).
        self.retry_s = (RETRY_MIN_S, RETRY_MAX_S)
        pending = spool.stats().records_pending if spool is not None else 0
        self.active = pending > 0
        self._queue: list[Held] = []
        self._queued = trio.Event()
        self._stored = trio.Event()  # something new in the spool: wake the drain
        self._freed = trio.Event()  # the drain deleted segments: retry a full spool
        self._writing = False
        # True from a refused append (backpressure: the spool is full) until
        # an append succeeds again.
        self._full = False
        # Why the spool cannot take records (None: it can), and the wake-ups of
        # the recovery task and of a writer waiting for the disk.
        self.unavailable: str | None = None
        self._gone = spool is None
        self._broken = trio.Event()
        self._usable_again = trio.Event()
        self._usable_again.set()
        self._available_since = 0.0
        self._swap = trio.Lock()  # one spool object per drain round
        self.on_written: Callable[[], None] | None = None
        # Takes back a record held for an unavailable spool: to Kafka.
        self.on_release: Callable[[Outgoing, Waiter], None] | None = None
        if unavailable is not None:  # the daemon has said why, loudly
            self._mark_unavailable(unavailable, gone=spool is None, quiet=True)
        if self.active:
            log.info("spool.pending_at_start", records=pending)
            self._stored.set()

    # ------------------------------------------------------------------ trio side, sync
    @property
    def refusing(self) -> bool:
        """The spool does not take records now (full, or unavailable): ingest
        drops QoS 0 records instead of queueing them."""
        return self._full or self.unavailable is not None

    @property
    def usable(self) -> bool:
        """Records Kafka cannot take go to the forwarder: the spool can take them,
        or records are queued behind a backlog that must drain first."""
        return self.active or self.unavailable is None

    def activate(self, reason: str) -> None:
        """Route new records to the spool (Kafka is down, slow, or full).  Not
        while the spool is unavailable: records then go straight to Kafka."""
        if not self.active and self.unavailable is None:
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
            nursery.start_soon(self._recoverer)

    async def _writer(self) -> None:
        while True:
            await self._queued.wait()
            await trio.sleep(self.fsync_interval_s)  # group commit window
            await self.write_queued()

    async def write_queued(self, *, wait_for_room: bool = True) -> None:
        """Append and sync everything queued now; tell each waiter once it is on disk.

        When the spool is full (backpressure), wait for the drain to free space;
        when it is unavailable, wait for the recovery task.  With
        ``wait_for_room=False`` (shutdown: no space is coming), return with the
        rest unstored: those messages stay unacknowledged and the MQTT broker
        delivers them again later.
        """
        while self._queue:
            spool = self.spool
            if spool is None or self.unavailable is not None:
                if not wait_for_room:
                    return
                await self._usable_again.wait()
                continue
            batch, self._queue = self._queue, []
            self._queued = trio.Event()
            # Armed before the append: space the drain frees meanwhile counts.
            self._freed = trio.Event()
            self._writing = True
            try:
                stored, dropped, refused = await trio.to_thread.run_sync(
                    self._append_and_sync, spool, batch
                )
            finally:
                self._writing = False
            self._full = isinstance(refused, SpoolFull)
            if refused is not None:
                self._queue[:0] = batch[stored:]
                batch = batch[:stored]
                self._refused(refused)
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
            if refused is not None:
                if not wait_for_room:
                    return
                if self._full:
                    await self._freed.wait()

    def _refused(self, refused: SpoolError) -> None:
        if isinstance(refused, SpoolUnavailable):
            self._mark_unavailable(refused.reason, gone=refused.gone)
            return
        self.stats.spool_full_waits += 1
        log.error(
            "spool.full",
            error=str(refused),
            held_records=len(self._queue),
            hint="MQTT acknowledgements wait until the drain frees space",
        )

    def _append_and_sync(
        self, spool: Spool, batch: list[Held]
    ) -> tuple[int, int, SpoolError | None]:
        """Worker thread: append the batch, in order, and fsync.

        Returns how many records (from the front) are stored, how many older
        records ``drop_oldest`` deleted for them, and the refusal that stopped
        the rest.  The spool takes an append whole or not at all, so a batch
        that does not fit (the spool's bound, or a full file system) is split,
        halved until a part fits, each part synced: what the free space holds
        is stored and acknowledged now, the rest waits.  Without the split, a
        backlog queued while the spool was full could outgrow ``max_bytes``
        itself and never be written at all.  Any other refusal of the file
        system stops at once; a failed sync stores nothing of its part.
        """
        records = [record for record, _ in batch]
        stored = dropped = 0
        size = len(records)
        while stored < len(records):
            part = records[stored : stored + size]
            try:
                dropped += spool.append(part).dropped
                spool.sync()
            except (SpoolFull, SpoolUnavailable) as exc:
                fits_smaller = isinstance(exc, SpoolFull) or exc.no_space
                if size > 1 and fits_smaller:
                    size //= 2
                    continue
                return stored, dropped, exc
            stored += len(part)
        return stored, dropped, None

    # ------------------------------------------------------------------ unavailable
    def _mark_unavailable(self, reason: str, *, gone: bool, quiet: bool = False) -> None:
        """The file system refused: say so once (again if the reason changes),
        wake the recovery task, and the drain (which hands the held records to
        Kafka once the spool has nothing readable left)."""
        if reason != self.unavailable and not quiet:
            log.error(
                "spool.unavailable",
                reason=reason,
                path=str(self.spool.path) if self.spool is not None else None,
                held_records=len(self._queue),
                hint="records go to Kafka without the spool; retrying with back-off",
            )
        if self.unavailable is None:
            self.stats.spool_unavailable += 1
            self._usable_again = trio.Event()
        self.unavailable = reason
        self._gone = self._gone or gone
        self._broken.set()
        self._stored.set()

    def _mark_available(self) -> None:
        log.info(
            "spool.available",
            path=str(self.spool.path) if self.spool is not None else None,
            was=self.unavailable,
        )
        self.unavailable = None
        self._gone = False
        self._broken = trio.Event()
        self._usable_again.set()
        self._available_since = trio.current_time()
        if self._queue:
            self._queued.set()
        if self.producer.state == "down":
            self.activate("Kafka is unreachable")

    async def _recoverer(self) -> None:
        """While the spool is unavailable: probe it (or open it) with back-off.
        The back-off keeps growing across short recoveries, so a disk that is
        just full enough to fail every append is not probed in a tight loop."""
        shortest, longest = self.retry_s
        delay = shortest
        while True:
            await self._broken.wait()
            if trio.current_time() - self._available_since > longest:
                delay = shortest
            await trio.sleep(delay)
            delay = min(delay * 2, longest)
            if await self._recover():
                self._mark_available()

    async def _recover(self) -> bool:
        spool = self.spool
        if spool is not None and not self._gone:
            try:
                await trio.to_thread.run_sync(spool.probe)
            except SpoolUnavailable as exc:
                self._mark_unavailable(exc.reason, gone=exc.gone)
                return False
            if not spool.read_only:
                return True
            # Opened read-only and the disk is writable again: open it for writing.
        if self.open_spool is None:
            return False
        async with self._swap:  # not in the middle of a drain round
            if spool is not None:
                await trio.to_thread.run_sync(spool.close)
                self.spool = None
            try:
                self.spool = await trio.to_thread.run_sync(self.open_spool)
            except (SpoolError, OSError) as exc:
                reason = describe(exc) if isinstance(exc, OSError) else str(exc)
                self._mark_unavailable(reason, gone=True)
                return False
        pending = self.spool.stats().records_pending
        if pending:
            self.active = True
            log.info("spool.pending_at_start", records=pending)
            self._stored.set()
        if self.spool.read_only:  # what it holds drains; nothing can be added
            self._mark_unavailable(READ_ONLY, gone=False)
            return False
        return True

    # ------------------------------------------------------------------ draining
    async def _drainer(self) -> None:
        delay = RETRY_MIN_S
        while True:
            await self._stored.wait()
            # Reset before reading: a store during the read wakes the next round.
            self._stored = trio.Event()
            try:
                await self._drain_round()
            except SpoolUnavailable:
                # The spool logged the read error; the same position is tried
                # again, and given up after a few attempts.
                self._stored.set()
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_MIN_S

    async def _drain_round(self) -> None:
        async with self._swap:
            spool = self.spool
            entries: list[SpoolEntry] = []
            if spool is not None:
                entries = await trio.to_thread.run_sync(spool.read, DRAIN_BATCH)
            if spool is None or not entries:
                if self.unavailable is not None and self._queue and not self._writing:
                    self._release()
                if self.idle and self.active:
                    self.active = False
                    log.info("spool.drained", hint="records go straight to Kafka again")
                return
            await self._produce(entries)
            await trio.to_thread.run_sync(spool.ack_through, entries[-1].seq)
            self.stats.spool_drained += len(entries)
            self._freed.set()
            self._stored.set()  # more may be waiting

    def _release(self) -> None:
        """The spool cannot take records and holds nothing readable any more:
        the records held for it go to Kafka, in their order, behind everything
        the spool held before them."""
        held, self._queue = self._queue, []
        self._queued = trio.Event()
        self.active = False
        log.warning(
            "spool.bypassed",
            records=len(held),
            reason=self.unavailable,
            hint="records go straight to Kafka until the spool is writable again",
        )
        assert self.on_release is not None, "ingest takes back what the spool cannot hold"
        for record, waiter in held:
            self.on_release(record, waiter)

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

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """At exit, after every task stopped: sync and release the spool."""
        if self.spool is not None:
            self.spool.close()
