"""Store-and-forward: the disk spool's writer, drain and recovery tasks.

Whether a record goes to the spool or to Kafka is not decided here: the
delivery machine (:class:`bridge.core.delivery.Delivery`, carried out by
:class:`bridge.ingest.pipeline.Ingest`) decides, and hands the records meant for the
spool to the :class:`SpoolIntake`.  This module appends them, syncs, and tells
the machine what happened (:class:`SpoolEvents`): which records are on disk,
that the spool is full or has room, that its disk failed or recovered, that
it holds records to drain, that the drain found nothing left.

Appends are grouped: the writer waits ``spool.fsync_interval_ms`` after the
first queued record, then appends and syncs everything queued in one
worker-thread call; a record counts as held for its MQTT message once the
``sync()`` covering it has returned (``fsync``).  A drain task produces the
spool's records to Kafka in append order while new ones keep arriving.

When the spool is full, ``spool.when_full`` decides.  ``backpressure`` (the
default): what still fits is stored, the rest stays in the intake, and is
retried whenever the drain frees space.  ``drop_oldest``: the spool deletes
its oldest segment, the records lost are counted and logged as an error.

When the spool's disk fails (full, read-only, I/O errors, the directory
removed) or the spool cannot be opened at all, it is *unavailable*:
``spool.unavailable`` is logged once with the reason, the records in the
intake wait there, and a recovery task probes the disk with back-off
(``RETRY_MIN_S`` doubling to ``RETRY_MAX_S``), opening the spool again where
it never opened or its directory vanished.  Records already in the spool keep
draining.  When the probe succeeds, ``spool.available`` is logged and the
writer takes records again.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

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

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class SpoolEvents(Protocol[T_contra]):
    """Whoever decides what goes to the spool (ingest, carrying out the
    delivery machine), told what the spool did."""

    def synced(self, tokens: Sequence[T_contra]) -> None:
        """These records are appended and synced (their tokens, in order)."""

    def spool_full(self) -> None:
        """An append was refused for want of room (``backpressure``)."""

    def spool_accepting(self) -> None:
        """An append went through whole."""

    def spool_unavailable(self) -> None:
        """The file system refused the spool."""

    def spool_available(self) -> None:
        """The spool's disk takes writes again."""

    def spool_backlog(self) -> None:
        """The spool holds records from before (at start, or opened again)."""

    def drained(self) -> None:
        """The drain found nothing readable, and no append is in progress."""


class SpoolIntake(Generic[T]):
    """Records handed to the spool and not appended yet, in order, each with
    its token (given back through :meth:`SpoolEvents.synced`).

    Ingest fills it (the machine's ``Spool`` actions) and empties it when the
    machine hands the records back to Kafka (``SpoolBypassed``); the writer
    takes from it.  Built before both, it lets each be built with what it
    needs: ingest tells the spool through it, the spool tells ingest through
    :class:`SpoolEvents`."""

    def __init__(self) -> None:
        self.held: list[tuple[Outgoing, T]] = []
        self.queued = trio.Event()  # wakes the writer

    def __len__(self) -> int:
        return len(self.held)

    def put(self, record: Outgoing, token: T) -> None:
        self.held.append((record, token))
        self.queued.set()

    def take(self) -> list[tuple[Outgoing, T]]:
        """Everything held, for one append."""
        taken, self.held = self.held, []
        self.queued = trio.Event()
        return taken

    def put_back(self, unstored: list[tuple[Outgoing, T]]) -> None:
        """What an append could not store, in front of what came meanwhile."""
        self.held[:0] = unstored

    def clear(self) -> None:
        """The records go elsewhere (to Kafka): forget them."""
        self.held = []
        self.queued = trio.Event()


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


class StoreAndForward(Generic[T]):
    """Owns the spool, and the writer, drain and recovery tasks.

    ``spool`` None: it could not be opened (``unavailable`` says why);
    ``open_spool`` opens it (again), for the recovery task.  ``intake``: where
    the records meant for the spool wait; ``events``: told what the spool did.
    """

    def __init__(
        self,
        spool: Spool | None,
        producer: KafkaProducer,
        stats: IngestStats,
        intake: SpoolIntake[T],
        events: SpoolEvents[T],
        *,
        fsync_interval_s: float,
        open_spool: Callable[[], Spool] | None = None,
        unavailable: str | None = None,
    ) -> None:
        self.spool = spool
        self.producer = producer
        self.stats = stats
        self.intake = intake
        self.events = events
        self.fsync_interval_s = fsync_interval_s
        self.open_spool = open_spool
        # The recovery task's back-off, from min doubling to max (tests shorten it).
        self.retry_s = (RETRY_MIN_S, RETRY_MAX_S)
        self._stored = trio.Event()  # something new in the spool: wake the drain
        self._freed = trio.Event()  # the drain deleted segments: retry a full spool
        self._writing = False
        # Why the spool cannot take records (None: it can), and the wake-ups of
        # the recovery task and of a writer waiting for the disk.
        self.unavailable: str | None = None
        self._gone = spool is None
        self._broken = trio.Event()
        self._usable_again = trio.Event()
        self._usable_again.set()
        self._available_since = 0.0
        self._swap = trio.Lock()  # one spool object per drain round
        if unavailable is not None:  # the daemon has said why, loudly
            self._mark_unavailable(unavailable, gone=spool is None, quiet=True)
        if spool is not None:
            self._backlog(spool)

    # ------------------------------------------------------------------ tasks
    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer)
            nursery.start_soon(self._drainer)
            nursery.start_soon(self._recoverer)

    async def _writer(self) -> None:
        while True:
            await self.intake.queued.wait()
            await trio.sleep(self.fsync_interval_s)  # group commit window
            await self.write_queued()

    async def write_queued(self, *, wait_for_room: bool = True) -> None:
        """Append and sync everything in the intake now; report the records on
        disk to :meth:`SpoolEvents.synced`.

        When the spool is full (backpressure), wait for the drain to free space;
        when it is unavailable, wait for the recovery task.  With
        ``wait_for_room=False`` (shutdown: no space is coming), return with the
        rest unstored: those messages stay unacknowledged and the MQTT broker
        delivers them again later.
        """
        intake = self.intake
        while intake:
            spool = self.spool
            if spool is None or self.unavailable is not None:
                if not wait_for_room:
                    return
                await self._usable_again.wait()
                continue
            batch = intake.take()
            # Armed before the append: space the drain frees meanwhile counts.
            self._freed = trio.Event()
            self._writing = True
            try:
                stored, dropped, refused = await trio.to_thread.run_sync(
                    self._append_and_sync, spool, batch
                )
            finally:
                self._writing = False
            if refused is None:
                self.events.spool_accepting()
            else:
                intake.put_back(batch[stored:])
                batch = batch[:stored]
                self._refused(refused)
            if dropped:
                self.stats.spool_dropped += dropped
                log.error(
                    "spool.dropped_oldest",
                    records=dropped,
                    hint="the spool is full and when_full = drop_oldest; raise spool.max_bytes",
                )
            if batch:
                self.events.synced([token for _, token in batch])
                self._stored.set()
            if refused is not None:
                if not wait_for_room:
                    return
                if isinstance(refused, SpoolFull):
                    await self._freed.wait()

    def _refused(self, refused: SpoolError) -> None:
        if isinstance(refused, SpoolUnavailable):
            self._mark_unavailable(refused.reason, gone=refused.gone)
            return
        self.stats.spool_full_waits += 1
        log.error(
            "spool.full",
            error=str(refused),
            held_records=len(self.intake),
            hint="MQTT acknowledgements wait until the drain frees space",
        )
        self.events.spool_full()

    def _append_and_sync(
        self, spool: Spool, batch: list[tuple[Outgoing, T]]
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
        tell the machine, wake the recovery task, and the drain (once the
        spool has nothing readable left, the machine hands the records waiting
        for it to Kafka)."""
        if reason != self.unavailable and not quiet:
            log.error(
                "spool.unavailable",
                reason=reason,
                path=str(self.spool.path) if self.spool is not None else None,
                held_records=len(self.intake),
                hint="records go to Kafka without the spool; retrying with back-off",
            )
        if self.unavailable is None:
            self.stats.spool_unavailable += 1
            self._usable_again = trio.Event()
        self.unavailable = reason
        self._gone = self._gone or gone
        self.events.spool_unavailable()
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
        if self.intake:
            self.intake.queued.set()
        self.events.spool_available()

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
        self._backlog(self.spool)
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
                if not self._writing:
                    self.events.drained()
                return
            await self._produce(entries)
            await trio.to_thread.run_sync(spool.ack_through, entries[-1].seq)
            self.stats.spool_drained += len(entries)
            self._freed.set()
            self._stored.set()  # more may be waiting

    def _backlog(self, spool: Spool) -> None:
        """A spool just opened: if it holds records, the machine keeps new ones
        behind them until the drain has sent them."""
        pending = spool.stats().records_pending
        if pending:
            log.info("spool.pending_at_start", records=pending)
            self.events.spool_backlog()
            self._stored.set()

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
