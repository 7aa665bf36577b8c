"""Reading again, for one resuming SSE client, what it missed.

A short-lived consumer with ``assign()`` (no group join, nothing committed)
reads each :class:`~bridge.core.events.ReplayRange` in a worker thread; the
trio side filters, frames and writes the events.  ``enable.partition.eof``
tells when a partition read "to its end" is done.  Records at or past a
range's end are not sent: the live stream, which buffered them in the client's
queue meanwhile, delivers them.  The event ids are cursors that advance with
the replay, so a client cut off during it resumes from where it was.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from confluent_kafka import OFFSET_BEGINNING as BEGINNING
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from bridge.core.events import (
    Filters,
    MalformedRecord,
    Positions,
    ReplayRange,
    encode_cursor,
    encode_event,
    iso_utc,
    kafka_event_id,
    parse_record,
    sse_frame,
)
from bridge.core.settings import KafkaSettings, StreamSettings
from bridge.io.kafka_config import replay_consumer_config
from bridge.io.kafka_logs import librdkafka_logger
from bridge.io.logs import SampledLog
from bridge.stream.consumer import CLOSE_TIMEOUT_S, CONSUME_TIMEOUT_S, fetch

#: A replay's Kafka errors, one per failing fetch of every resuming client:
#: sampled, so clients resuming by the hundred cannot flood the journal.
_kafka_errors = SampledLog("stream.replay_kafka_error")

#: Bound on the topic metadata request made before a replay.
METADATA_TIMEOUT_S = 5.0


@dataclass
class ReplayOutcome:
    """``complete`` when every range was read to its end; ``positions`` is the
    cursor after the last record read (delivered or filtered out);
    ``unknown``: partitions the cursor names that the topics do not have (then
    nothing was read)."""

    complete: bool
    positions: Positions
    events: int
    unknown: list[str] = field(default_factory=list)


def _unknown_partitions(consumer: Consumer, ranges: list[ReplayRange]) -> list[str]:
    """``topic/partition`` of each range the cluster does not have (worker thread).

    Checked before reading: a partition that does not exist never reports its
    end, so reading it would hold a replay slot for the whole replay timeout.
    Raises KafkaException when the metadata does not come in time.
    """
    unknown = []
    for topic in sorted({r.topic for r in ranges}):
        metadata = consumer.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics.get(topic)
        have = metadata.partitions if metadata is not None and metadata.error is None else {}
        unknown += [
            f"{topic}/{r.partition}" for r in ranges if r.topic == topic and r.partition not in have
        ]
    return unknown


def _consumer(kafka: KafkaSettings, stream: StreamSettings) -> Consumer:
    group_id = f"edge-bridge-replay-{secrets.token_hex(4)}"
    return Consumer(
        replay_consumer_config(kafka, stream, group_id)
        | {"logger": librdkafka_logger("stream-replay")}
    )


#: One record read again -> the event's JSON for a client with these filters,
#: or None when it is not for it: (topic, partition, offset), value, headers,
#: sent_at, filters.  An endpoint of ``[[streams]]`` gives its own reader and
#: envelope; the default is the built-in clean record in ``telemetry.update``.
EventOf = Callable[
    [tuple[str, int, int], bytes | None, list[tuple[str, bytes]] | None, str, Filters],
    bytes | None,
]


def clean_event(
    at: tuple[str, int, int],
    value: bytes | None,
    _headers: list[tuple[str, bytes]] | None,
    sent_at: str,
    filters: Filters,
) -> bytes | None:
    """The built-in endpoints' event of a clean record."""
    try:
        record = parse_record(value)
    except MalformedRecord:
        return None
    if not filters.matches(record.tenant, record.device, record.metric):
        return None
    return encode_event(kafka_event_id(*at), sent_at, record.json)


class _GapReader:
    """The per-replay state: what is left to read and where each partition is."""

    def __init__(
        self,
        ranges: list[ReplayRange],
        cursor: Positions,
        filters: Filters,
        event: EventOf = clean_event,
    ) -> None:
        self.pending = {(r.topic, r.partition): r.end for r in ranges}
        self.positions: Positions = {topic: dict(parts) for topic, parts in cursor.items()}
        self.filters = filters
        self.event = event
        self.events = 0

    def _finish(self, key: tuple[str, int], position: int) -> None:
        end = self.pending.pop(key)
        topic, partition = key
        self.positions.setdefault(topic, {})[partition] = position if end is None else end

    def frames(self, messages: list[Message], sent_at: str) -> list[bytes]:
        out = []
        for message in messages:
            error = message.error()
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:
                if error is not None:
                    _kafka_errors(error=error.str())
                continue
            key = (topic, partition)
            if key not in self.pending:
                continue
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._finish(key, offset)
                else:
                    _kafka_errors(topic=topic, error=error.str())
                continue
            frame = self._frame(key, offset, message, sent_at)
            if frame is not None:
                out.append(frame)
        return out

    def _frame(
        self, key: tuple[str, int], offset: int, message: Message, sent_at: str
    ) -> bytes | None:
        """The SSE frame of one record, or None when it is not for this client."""
        topic, partition = key
        end = self.pending[key]
        if end is not None and offset >= end:
            self._finish(key, end)
            return None
        self.positions.setdefault(topic, {})[partition] = offset + 1
        if end is not None and offset + 1 >= end:
            self._finish(key, end)
        raw = message.headers()
        headers = (
            [(k, v) for k, v in raw if isinstance(v, bytes)] if isinstance(raw, list) else None
        )
        data = self.event(
            (topic, partition, offset), message.value(), headers, sent_at, self.filters
        )
        if data is None:
            return None
        self.events += 1
        return sse_frame(data, encode_cursor(self.positions))


async def replay(
    ranges: list[ReplayRange],
    cursor: Positions,
    filters: Filters,
    send: Callable[[bytes], Awaitable[None]],
    *,
    kafka: KafkaSettings,
    stream: StreamSettings,
    event: EventOf = clean_event,
) -> ReplayOutcome:
    """Send the missed events through ``send``, within ``stream.replay_timeout_s``
    and ``stream.replay_max_events``; past either the outcome is incomplete."""
    reader = _GapReader(ranges, cursor, filters, event)
    if not ranges:
        return ReplayOutcome(True, reader.positions, 0)
    consumer = _consumer(kafka, stream)
    try:
        unknown = await trio.to_thread.run_sync(_unknown_partitions, consumer, ranges)
        if unknown:
            return ReplayOutcome(False, reader.positions, 0, unknown)
        consumer.assign(
            [
                TopicPartition(r.topic, r.partition, r.start if r.start is not None else BEGINNING)
                for r in ranges
            ]
        )
        with trio.move_on_after(stream.replay_timeout_s):
            while reader.pending and reader.events < stream.replay_max_events:
                messages = await trio.to_thread.run_sync(
                    fetch, consumer, stream.consume_batch, CONSUME_TIMEOUT_S
                )
                frames = reader.frames(messages, iso_utc(time.time_ns()))
                if frames:
                    await send(b"".join(frames))
    finally:
        with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
            await trio.to_thread.run_sync(consumer.close, abandon_on_cancel=True)
    return ReplayOutcome(not reader.pending, reader.positions, reader.events)
