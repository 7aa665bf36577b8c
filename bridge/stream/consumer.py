"""The stream's Kafka consumer (confluent-kafka) beside trio.

``consume()`` blocks in librdkafka, so it runs in a worker thread with a short
timeout; the trio side dispatches each batch to the hub between calls.  The
librdkafka callbacks (errors, statistics, assignment) are served inside
``consume()`` on that worker thread: they only record what happened, and the
trio side acts on it after the call returns.  The one exception is the
assignment callback, which must set the start offsets before it returns; it
only *reads* the hub's positions, which are written by this same task's trio
side, never while the thread runs.

Start offsets, decided per partition at each assignment:
- a partition the stream already read: where it stopped (an eager rebalance,
  for example when a new topic appears, must not skip or repeat anything);
- a partition of a topic first seen missing: its beginning, since every record
  in it was written after the stream started (Tansu and Kafka create topics on
  first produce);
- with a configured ``group_id``: the group's committed offset, if any;
- otherwise the end (``latest``): a daemon starts with what happens next.
Resolving them here, rather than leaving ``auto.offset.reset`` to it, gives
the hub a position for every partition from the start, which the SSE cursor
needs (see :mod:`bridge.core.events`).

Reading only while someone watches: a source built with ``wanted`` (the
live stream's hubs, when no ``group_id`` is configured) pauses its partitions
while no client is connected, because every record it read then would be
thrown away, and reading the bridge's own clean records back cost a fifth of
the daemon's CPU per message at full load (docs/benchmarks.md).  When a
client connects, each partition moves to its end (the high watermark, asked
of the broker) and resumes; until it has, the source is not ``live``, and the
client's handshake waits for that (:func:`bridge.stream.gate.until_live`), so
whatever is written once it is connected reaches it, and a resuming SSE
client's replay ends where the live stream starts.  A configured
``group_id`` is a group that outlives the process and keeps committing, and
``start = "earliest"`` promises the first client what came before: such a
source always reads.

Kafka state, in the status: ``connecting`` until the first assignment,
``ok`` while brokers answer, ``down`` after librdkafka reports all brokers
down or a statistics snapshot shows none up (back to ``ok`` when one shows a
broker up or a record arrives).  The two signals are applied in the order
they arrived: a snapshot taken just before the brokers went away must not
undo the "all brokers down" event that follows it in the same batch.  Only
real brokers count: once they are gone librdkafka forgets the ones it learned
from metadata and keeps its bootstrap and logical (coordinator) entries.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import msgspec
import structlog
import trio
from confluent_kafka import (
    OFFSET_END,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from bridge.core.events import Positions, iso_utc
from bridge.core.settings import KafkaSettings, StreamSettings
from bridge.io.kafka_config import stream_consumer_config
from bridge.io.kafka_logs import librdkafka_logger
from bridge.io.logs import SampledLog


class RecordSink(Protocol):
    """What a :class:`KafkaSource` feeds: the stream's hub, or the console's
    dead-letter feed.  ``positions`` is read at assignment, ``kafka_feeding``
    set with the source's state."""

    positions: Positions
    kafka_feeding: bool

    def publish_kafka(
        self, topic: str, partition: int, offset: int, value: bytes | None, sent_at: str
    ) -> None: ...

    def skipped(self, records: int) -> None: ...


#: How a shared sink takes one record: topic, partition, offset, value,
#: sent_at, the record's headers (when it wants them) and the batch's time (ms).
SharedPublish = Callable[
    [str, int, int, bytes | None, str, list[tuple[str, bytes]] | None, int], None
]


class SharedSink(Protocol):
    """A hub of a ``[[streams]]`` endpoint: several may share one source, and
    its reader may want the record's headers and the time of the batch."""

    positions: Positions
    kafka_feeding: bool
    wants_headers: bool

    def skipped(self, records: int) -> None: ...

    @property
    def publish_kafka(self) -> SharedPublish: ...


log = structlog.get_logger(__name__)

KafkaState = Literal["connecting", "ok", "down", "disabled"]

CONSUME_TIMEOUT_S = 0.5
#: While paused: how often the source looks for a client (and serves
#: librdkafka's callbacks); a first client's handshake waits up to this long.
IDLE_POLL_S = 0.05
#: A client about to connect (:meth:`KafkaSource.expect_client`) keeps the
#: source reading this long, time enough to be admitted.
EXPECT_CLIENT_S = 10.0
#: Bound on the broker round trips made inside the assignment callback.
OFFSET_QUERY_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 5.0
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
#: A batch whose newest record is older than this (its Kafka timestamp) shows
#: a stream that fell behind: it skips to the end of every partition.
MAX_BEHIND_S = 10.0


def fetch(consumer: Consumer, batch: int, timeout: float) -> list[Message]:
    """Up to ``batch`` messages, waiting at most ``timeout`` for the first (call
    it in a worker thread).

    ``consume(n, timeout)`` alone waits until it has ``n`` messages or the time
    is up, which at a trickle of records would add the whole timeout to every
    event's latency; waiting for one and then taking whatever else is ready
    keeps both the latency and the batching.
    """
    first: list[Message] = consumer.consume(1, timeout)
    if not first or batch == 1:
        return first
    rest: list[Message] = consumer.consume(batch - 1, 0)
    return first + rest


def _age_s(message: Message) -> float:
    """Seconds since the record's Kafka timestamp (0 when it has none)."""
    kind, stamp_ms = message.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE or stamp_ms <= 0:
        return 0.0
    return time.time() - stamp_ms / 1000


def _ends(consumer: Consumer, partitions: list[tuple[str, int]]) -> list[TopicPartition]:
    """Worker thread: each partition's end (high watermark) as the broker
    says now, one round trip each."""
    ends = []
    for topic, partition in partitions:
        where = TopicPartition(topic, partition)
        marks = consumer.get_watermark_offsets(where, timeout=OFFSET_QUERY_TIMEOUT_S, cached=False)
        if marks is not None:
            ends.append(TopicPartition(topic, partition, marks[1]))
    return ends


def default_group_id() -> str:
    """A group of this process's own, so that every daemon instance reads every
    record; the random part keeps a restarted process out of the old
    generation's group."""
    return f"edge-bridge-stream-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class _BrokerStats(msgspec.Struct):
    state: str = ""
    source: str = ""


class _PartitionStats(msgspec.Struct):
    hi_offset: int = -1


class _TopicStats(msgspec.Struct):
    partitions: dict[str, _PartitionStats] = {}


class _Stats(msgspec.Struct):
    brokers: dict[str, _BrokerStats] = {}
    topics: dict[str, _TopicStats] = {}


_stats_decoder = msgspec.json.Decoder(_Stats)

# librdkafka's ``source`` of a broker entry: bootstrap and metadata brokers,
# not the "logical" coordinator handle nor the "internal" one.
_REAL_BROKERS = frozenset({"configured", "learned"})


@dataclass
class _ThreadNotes:
    """What the callbacks saw during one ``consume()`` call (worker thread)."""

    assigned: list[tuple[str, int, int]] = field(default_factory=list)
    any_assignment: bool = False
    fatal: KafkaError | None = None
    errors: list[KafkaError] = field(default_factory=list)
    # In arrival order: an "all brokers down" event (None) or a snapshot.
    broker_signals: list[_Stats | None] = field(default_factory=list)


class KafkaSource:
    """Reads ``stream.topics`` and feeds the hub until cancelled."""

    def __init__(
        self,
        kafka: KafkaSettings,
        stream: StreamSettings,
        hub: RecordSink,
        *,
        shared: Sequence[SharedSink] = (),
        earliest: bool = False,
        events: str = "stream",
        wanted: Callable[[], bool] | None = None,
    ) -> None:
        """``shared``: the hubs fed from the same records (``hub`` is the first
        of them), for endpoints with the same source; ``earliest``: a partition
        without a known or committed position starts at its beginning;
        ``events``: the prefix of its log events (``stream.kafka_state``), so
        that another reader (the console's dead letters) logs under its own;
        ``wanted``: whether any client reads what this source feeds now
        (None: always read, as a feed that keeps a history must); ignored with
        a configured ``group_id`` or with ``earliest`` (see the module doc)."""
        self._events = events
        self._kafka = kafka
        self._stream = stream
        self._hub = hub
        self._shared = list(shared)
        self._sinks: list[RecordSink | SharedSink] = [*shared] or [hub]
        self._earliest = earliest
        self.group_id = stream.group_id or default_group_id()
        self.state: KafkaState = "connecting"
        self.assigned: set[tuple[str, int]] = set()
        self.high_watermarks: dict[tuple[str, int], int] = {}
        self._missing_topics: set[str] = set()
        self._notes = _ThreadNotes()
        self._wanted = wanted if stream.group_id is None and not earliest else None
        #: Paused for want of clients (see the module doc).
        self.paused = False
        self._expected_until = -math.inf
        self._live = trio.Event()
        self._kafka_errors = SampledLog(f"{events}.kafka_error")
        self._record_errors = SampledLog(f"{events}.kafka_record_error")
        self._record_failures = SampledLog(f"{events}.record_failed", level="error")

    # ----------------------------------------------------------------- trio side
    async def run(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            try:
                consumer = Consumer(
                    stream_consumer_config(self._kafka, self._stream, self.group_id)
                    | {
                        "error_cb": self._on_error,
                        "stats_cb": self._on_stats,
                        "logger": librdkafka_logger("stream"),
                    }
                )
                consumer.subscribe(list(self._stream.topics), on_assign=self._on_assign)
            except KafkaException as exc:
                log.error(
                    f"{self._events}.kafka_consumer_failed", error=str(exc), retry_in_s=backoff
                )
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            log.info(
                f"{self._events}.kafka_consumer_started",
                topics=self._stream.topics,
                group_id=self.group_id,
                bootstrap=self._kafka.bootstrap,
            )
            try:
                fatal = await self._consume(consumer)
            finally:
                with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                    await trio.to_thread.run_sync(consumer.close, abandon_on_cancel=True)
            log.error(f"{self._events}.kafka_fatal", error=str(fatal), retry_in_s=backoff)
            self._set_state("connecting")
            self.assigned.clear()
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _consume(self, consumer: Consumer) -> KafkaError:
        """Batches until a fatal error, which is returned."""
        batch_size = max(1, self._stream.consume_batch)
        while True:
            if self._wanted is not None:
                await self._follow_clients(consumer)
            timeout = IDLE_POLL_S if self.paused else CONSUME_TIMEOUT_S
            messages = await trio.to_thread.run_sync(fetch, consumer, batch_size, timeout)
            notes, self._notes = self._notes, _ThreadNotes()
            self._apply(notes)
            if notes.fatal is not None:
                return notes.fatal
            if self.paused and notes.any_assignment:
                self._pause(consumer)  # a new assignment fetches: not while no one reads
            if messages:
                self._publish(messages)
                if _age_s(messages[-1]) > MAX_BEHIND_S:
                    self._skip_to_present(consumer)

    async def _follow_clients(self, consumer: Consumer) -> None:
        """Pause when the last client has gone; move to the present and resume
        when one is back (see the module doc)."""
        assert self._wanted is not None
        wanted = self._wanted() or trio.current_time() < self._expected_until
        if not wanted and not self.paused:
            self._pause(consumer)
        elif wanted and self.paused:
            partitions = sorted(self.assigned)
            try:
                ends = await trio.to_thread.run_sync(_ends, consumer, partitions)
            except KafkaException as exc:
                # Go on from where it paused: a long pause is then skipped by
                # the MAX_BEHIND_S rule, with the clients told.
                self._kafka_errors(code="resume_offsets_failed", error=str(exc))
                ends = []
            self._resume(consumer, partitions, ends)

    def expect_client(self) -> None:
        """A client is connecting (not yet admitted): read again now, and
        for ``EXPECT_CLIENT_S`` whether or not it is admitted."""
        self._expected_until = trio.current_time() + EXPECT_CLIENT_S

    def _pause(self, consumer: Consumer) -> None:
        partitions = [TopicPartition(t, p) for t, p in sorted(self.assigned)]
        try:
            if partitions:
                consumer.pause(partitions)
        except KafkaException as exc:
            self._kafka_errors(code="pause_failed", error=str(exc))
            return
        if not self.paused:
            log.info(
                f"{self._events}.kafka_paused",
                hint="no client is connected: nothing is read until one is",
            )
            self.paused = True
            self._update_live()

    def _resume(
        self, consumer: Consumer, partitions: list[tuple[str, int]], ends: list[TopicPartition]
    ) -> None:
        """Resume ``partitions`` and move each to its end in ``ends`` (never
        back: a broker whose answer is behind the position is not followed);
        the positions of every sink jump there."""
        first = self._sinks[0].positions
        starts, unread = [], 0
        for end in ends:
            paused_at = first.get(end.topic, {}).get(end.partition, end.offset)
            if end.offset > paused_at:
                starts.append(end)
                unread += end.offset - paused_at
        try:
            consumer.resume([TopicPartition(t, p) for t, p in partitions])
            # After resume, not before: a seek on a paused partition may be
            # undone by the resume; records fetched before the seek are dropped.
            for start in starts:
                consumer.seek(start)
        except KafkaException as exc:
            self._kafka_errors(code="resume_failed", error=str(exc))
            return
        for start in starts:
            for sink in self._sinks:
                sink.positions.setdefault(start.topic, {})[start.partition] = start.offset
        log.info(f"{self._events}.kafka_resumed", unread_while_paused=unread)
        self.paused = False
        self._update_live()

    def _apply(self, notes: _ThreadNotes) -> None:
        for topic, partition, offset in notes.assigned:
            if offset >= 0:
                for sink in self._sinks:
                    sink.positions.setdefault(topic, {})[partition] = offset
            self._missing_topics.discard(topic)
        if notes.any_assignment:
            self.assigned = {(t, p) for t, p, _ in notes.assigned}
            log.info(
                f"{self._events}.partitions_assigned",
                partitions=[f"{t}/{p}@{o}" for t, p, o in notes.assigned],
            )
            if self.assigned:
                self._set_state("ok")
        for error in notes.errors:
            self._kafka_errors(code=error.name(), error=error.str())
        for signal in notes.broker_signals:
            if signal is None:
                if self.state == "ok":
                    self._set_state("down")
            else:
                self._apply_stats(signal)

    def _apply_stats(self, stats: _Stats) -> None:
        for topic, topic_stats in stats.topics.items():
            for name, partition in topic_stats.partitions.items():
                if name != "-1" and partition.hi_offset >= 0:
                    self.high_watermarks[(topic, int(name))] = partition.hi_offset
        up = any(b.state == "UP" for b in stats.brokers.values() if b.source in _REAL_BROKERS)
        if up and self.state == "down" and self.assigned:
            self._set_state("ok")
        elif not up and self.state == "ok":
            self._set_state("down")

    def _publish(self, messages: list[Message]) -> None:
        now_ns = time.time_ns()
        sent_at = iso_utc(now_ns)
        publish = self._hub.publish_kafka
        shared = self._shared
        headers = any(sink.wants_headers for sink in shared)
        errors = 0  # counted rather than the records: errors are the rare case
        for message in messages:
            error = message.error()
            if error is not None:
                self._record_error(message, error)
                errors += 1
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            assert topic is not None and partition is not None and offset is not None
            if not shared:
                try:
                    publish(topic, partition, offset, message.value(), sent_at)
                except Exception as exc:
                    self._record_failed(topic, partition, offset, exc)
                continue
            value = message.value()
            raw = message.headers() if headers else None
            found = (
                [(k, v) for k, v in raw if isinstance(v, bytes)] if isinstance(raw, list) else None
            )
            for sink in shared:
                try:
                    sink.publish_kafka(
                        topic, partition, offset, value, sent_at, found, now_ns // 10**6
                    )
                except Exception as exc:
                    self._record_failed(topic, partition, offset, exc)
        # An error event (a transport error, say) is no sign of a live broker.
        if len(messages) > errors and self.state != "ok" and self.assigned:
            self._set_state("ok")

    def _record_failed(self, topic: str, partition: int, offset: int, exc: Exception) -> None:
        """The crash barrier around each record: one the readers fail on (a
        bug, or JSON nested deep enough to exhaust a decoder's recursion) is
        skipped for this reader and logged sampled with its traceback, never
        the end of the consumer, which would end the daemon."""
        self._record_failures(
            topic=topic,
            partition=partition,
            offset=offset,
            error=f"{type(exc).__name__}: {str(exc)[:200]}",
            exc_info=exc,
        )

    def _skip_to_present(self, consumer: Consumer) -> None:
        """Behind by more than MAX_BEHIND_S: rather than deliver ever older
        records (while librdkafka holds the next ones, up to its prefetch
        bound), go to the end of every assigned partition; the hub tells the
        clients how many records they miss, as with ``lagged``.  A resuming
        SSE client replays the gap from Kafka.  The ingest is not involved."""
        skipped = 0
        for topic, partition in sorted(self.assigned):
            position = self._hub.positions.get(topic, {}).get(partition)
            try:
                # The end as the last fetch saw it (no round trip), rather than
                # the logical end, which is resolved later and would also skip
                # what arrives meanwhile.
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
                if high is None or high < 0 or position is None or high <= position:
                    continue
                consumer.seek(TopicPartition(topic, partition, high))
            except KafkaException as exc:
                self._kafka_errors(code="skip_failed", error=str(exc))
                continue
            skipped += high - position
        if not skipped:
            return
        log.warning(
            "stream.skipped_to_present",
            records=skipped,
            behind_s=MAX_BEHIND_S,
            hint="the stream could not keep up with the topic; clients were told",
        )
        for sink in self._sinks:
            sink.skipped(skipped)

    def _record_error(self, message: Message, error: KafkaError) -> None:
        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART and message.topic():
            topic = message.topic()
            assert topic is not None
            if topic not in self._missing_topics:
                log.info(
                    f"{self._events}.topic_missing",
                    topic=topic,
                    hint="it is read from its beginning once it exists",
                )
            self._missing_topics.add(topic)
            return
        self._record_errors(topic=message.topic(), code=error.name(), error=error.str())

    def _set_state(self, state: KafkaState) -> None:
        if state != self.state:
            log.info(f"{self._events}.kafka_state", state=state, previous=self.state)
            self.state = state
        for sink in self._sinks:
            sink.kafka_feeding = state == "ok"
        self._update_live()

    @property
    def live(self) -> bool:
        """Whether Kafka feeds the stream now: state ``ok`` (partitions
        assigned, a broker answering) and not paused for want of clients."""
        return self.state == "ok" and not self.paused

    def _update_live(self) -> None:
        if self.live:
            self._live.set()
        elif self._live.is_set():
            self._live = trio.Event()

    async def wait_feeding(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the source to be :attr:`live`; whether
        it is now."""
        with trio.move_on_after(timeout_s):
            while not self.live:
                await self._live.wait()
        return self.live

    # ----------------------------------------------------------------- worker thread
    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._notes.fatal = error
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._notes.broker_signals.append(None)
        self._notes.errors.append(error)

    def _on_stats(self, text: str) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            self._notes.broker_signals.append(_stats_decoder.decode(text))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        resolved = [self._start_offset(consumer, tp) for tp in partitions]
        consumer.assign(resolved)
        self._notes.any_assignment = True
        self._notes.assigned = [(tp.topic, tp.partition, tp.offset) for tp in resolved]

    def _start_offset(self, consumer: Consumer, tp: TopicPartition) -> TopicPartition:
        topic, partition = tp.topic, tp.partition
        known = self._hub.positions.get(topic, {}).get(partition)
        if known is not None:
            return TopicPartition(topic, partition, known)
        try:
            if self._stream.group_id is not None:
                (committed,) = consumer.committed([tp], timeout=OFFSET_QUERY_TIMEOUT_S)
                if committed.offset >= 0:
                    return TopicPartition(topic, partition, committed.offset)
            marks = consumer.get_watermark_offsets(tp, timeout=OFFSET_QUERY_TIMEOUT_S, cached=False)
        except KafkaException as exc:
            self._notes.errors.append(exc.args[0])
            marks = None
        if marks is None:
            # librdkafka resolves "latest" itself; the hub learns the position
            # from the first record.
            return TopicPartition(topic, partition, OFFSET_END)
        low, high = marks
        start = low if self._earliest or topic in self._missing_topics else high
        return TopicPartition(topic, partition, start)
