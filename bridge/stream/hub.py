"""Fan-out: each record, encoded once, to the bounded queue of every client
whose filters match.

Why the hub never waits: it runs in the Kafka consumer's task (and in the
ingest's, for edge-local records), so a client that cannot keep up must cost
that task nothing.  Every client has its own queue of ``client_queue`` events;
putting into it is synchronous.  When it is full the oldest event is dropped
and counted; the client's sender tells it ``{"type": "lagged", "dropped": n}``
at the place of the gap.  A client that lost more than ``max_lag_drops``
events since it last caught up (found its queue empty) is marked *kicked*: it
gets nothing more, and its session closes it with 1008 (WebSocket) or ends
the response (SSE).  See docs/streaming.md.

Every event is encoded once (the envelope JSON), and, only if some client of
that kind matches, once more as text for WebSocket clients and once as an SSE
frame whose ``id`` is the stream's cursor at that moment.  All clients get the
same objects.
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from itertools import chain

import trio

from bridge.core.events import (
    Filters,
    MalformedRecord,
    ParsedRecord,
    Positions,
    encode_cursor,
    encode_event,
    kafka_event_id,
    parse_record,
    sse_frame,
)
from bridge.core.stream_envelope import EnvelopeRules, render_event
from bridge.core.stream_read import MappingReader, Reader, StreamItem
from bridge.io.logs import SampledLog

#: Events whose envelope could not be rendered (a bug, not a bad record).
_render_failures = SampledLog("stream.render_failed", level="error")

#: Where a record is: topic, partition, offset, and its edge-local sequence
#: number (0: not delivered locally); and the headers a reader gets.
At = tuple[str, int, int, int]
Hdrs = list[tuple[str, bytes]] | None
#: How a configured endpoint's event is rendered for a metric filter.
Render = Callable[[frozenset[str] | None], bytes | None]

#: Limit key of an admin connection that watches every tenant.
ALL_TENANTS = "*"
#: How many locally delivered records are remembered to recognise them when
#: they come back from Kafka after an outage (edge-local mode).
LOCAL_MEMORY = 10_000

Values = dict[bytes, deque[int]]


def _nothing() -> None:
    pass


class Transport(enum.Enum):
    WEBSOCKET = "websocket"
    SSE = "sse"


class Event:
    """One record as sent to clients; built once, shared by every client."""

    __slots__ = (
        "_bodies",
        "cursor",
        "device",
        "json",
        "metric",
        "metrics",
        "offset",
        "partition",
        "render",
        "sse",
        "tenant",
        "text",
        "topic",
    )

    def __init__(
        self, record: ParsedRecord, json: bytes, topic: str | None, partition: int, offset: int
    ) -> None:
        self.tenant = record.tenant
        self.device = record.device
        self.metric = record.metric
        self.json = json
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.text: str | None = None
        self.sse: bytes | None = None
        #: Set for an event of a configured endpoint (``[[streams]]``): its
        #: metrics, and how its envelope is rendered for a metric filter (once
        #: per distinct filter, cached in ``_bodies``).
        self.metrics: Collection[str] | None = None
        self.render: Render | None = None
        self.cursor: str | None = None
        self._bodies: dict[frozenset[str] | None, tuple[bytes, str] | None] = {}

    @classmethod
    def of_item(
        cls, item: StreamItem, render: Render, topic: str, partition: int, offset: int
    ) -> Event:
        event = cls.__new__(cls)
        event.tenant, event.device, event.metric = item.tenant, item.device, ""
        event.json = item.json
        event.topic, event.partition, event.offset = topic, partition, offset
        event.text = event.sse = event.cursor = None
        event.metrics = item.metrics.keys()
        event.render = render
        event._bodies = {}
        return event

    def _body(self, client: Client) -> tuple[bytes, str] | None:
        assert self.render is not None
        wanted = client.filters.metrics
        if wanted in self._bodies:
            return self._bodies[wanted]
        try:
            data = self.render(wanted)
        except Exception as exc:  # skipped for these clients, never their end
            _render_failures(topic=self.topic, offset=self.offset, error=repr(exc)[:200])
            data = None
        body = (data, data.decode()) if data is not None else None
        self._bodies[wanted] = body
        return body

    def text_for(self, client: Client) -> str | None:
        """The WebSocket text for ``client``."""
        if self.render is None:
            return self.text
        body = self._body(client)
        return body[1] if body is not None else None

    def sse_for(self, client: Client) -> bytes | None:
        """The SSE frame for ``client``: its id the cursor, or the client's own count."""
        if self.render is None:
            return self.sse
        body = self._body(client)
        if body is None:
            return None
        if client.sse_counter is not None:
            client.sse_counter += 1
            return sse_frame(body[0], str(client.sse_counter))
        return sse_frame(body[0], self.cursor)


@dataclass(frozen=True, slots=True)
class Batch:
    """What a client's sender takes at once: queued events, how many were
    dropped before them, and whether the client is to be disconnected."""

    events: list[Event]
    dropped: int
    kicked: bool


class ClientQueue:
    """A bounded queue that drops the oldest event, with the lag policy above."""

    def __init__(self, capacity: int, max_drops: int) -> None:
        self.capacity = max(1, capacity)
        self.max_drops = max_drops
        self._items: deque[Event] = deque()
        self._wakeup = trio.Event()
        self._dropped_pending = 0
        self.behind = 0
        self.dropped_total = 0
        self.kicked = False
        #: Called on each dropped event (the hub's counter) and once on the kick
        #: (the sender's deadline).
        self.on_drop: Callable[[], None] = _nothing
        self.on_kick: Callable[[], None] = _nothing

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: Event) -> None:
        if self.kicked:
            return
        if len(self._items) >= self.capacity:
            self._items.popleft()
            self._dropped_pending += 1
            self.behind += 1
            self.dropped_total += 1
            self.on_drop()
            if self.behind > self.max_drops:
                self.kick()
                return
        self._items.append(event)
        self._wakeup.set()

    def skipped(self, records: int) -> None:
        """The stream skipped ``records`` it had fallen behind on: the client is
        told like a drop (``lagged``), which counts not against its own lag:
        it did not fall behind, the stream did."""
        if self.kicked or records <= 0:
            return
        self._dropped_pending += records
        self.dropped_total += records
        self._wakeup.set()

    def clear(self) -> None:
        """Forget what is queued (an SSE resume reads it from Kafka instead)."""
        self._items.clear()
        self._dropped_pending = 0
        self.behind = 0

    def retain(self, keep: Callable[[Event], bool]) -> None:
        """Drop queued events that no longer match (after a filter change)."""
        self._items = deque(e for e in self._items if keep(e))

    async def next_batch(self, timeout: float) -> Batch:
        """Everything queued; waits up to ``timeout`` when nothing is.

        Finding the queue empty is what "caught up" means: the count of drops
        that leads to a disconnect starts again from zero.
        """
        if not self._items and not self._dropped_pending and not self.kicked:
            self.behind = 0
            self._wakeup = trio.Event()
            with trio.move_on_after(timeout):
                await self._wakeup.wait()
        events = list(self._items)
        self._items.clear()
        dropped, self._dropped_pending = self._dropped_pending, 0
        return Batch(events, dropped, self.kicked)

    def kick(self) -> None:
        """No more events for this client: its sender ends the connection."""
        if self.kicked:
            return
        self._items.clear()
        self.kicked = True
        self._wakeup.set()
        self.on_kick()


class Client:
    """One connected dashboard: its filters, its queue, where it is counted."""

    def __init__(
        self, transport: Transport, filters: Filters, role: str, queue: ClientQueue
    ) -> None:
        self.transport = transport
        self.filters = filters
        self.role = role
        self.queue = queue
        self.limit_key = filters.tenant if filters.tenant is not None else ALL_TENANTS
        #: (topic, partition) -> first offset still to deliver: set after an SSE
        #: replay for partitions the replay read beyond what the hub had seen.
        self.skip_below: dict[tuple[str, int], int] = {}
        #: The first edge-local record (by sequence number) this client was
        #: registered for: the Kafka copies of earlier ones are new to it.
        self.local_from = 0
        #: SSE ids: None for the stream's cursor, else this connection's count.
        self.sse_counter: int | None = None
        #: (tenant, device) -> its groups, for a ``group`` filter.
        self.groups_of: Mapping[tuple[str, str], frozenset[str]] = {}

    def wants(self, event: Event) -> bool:
        filters = self.filters
        if event.metrics is None:
            if not filters.matches(event.tenant, event.device, event.metric):
                return False
        else:
            groups = (
                self.groups_of.get((event.tenant, event.device), ())
                if filters.groups is not None
                else ()
            )
            if not filters.selects(event.tenant, event.device, event.metrics, groups):
                return False
        if self.skip_below and event.topic is not None:
            floor = self.skip_below.get((event.topic, event.partition))
            if floor is not None and event.offset < floor:
                return False
        return True


class TooManyConnections(Exception):
    """The tenant already has ``max_per_tenant`` connections."""


class Hub:
    """Clients by tenant, the stream position, and the dispatch of records."""

    def __init__(self, *, max_per_tenant: int, local_fallback: bool = True) -> None:
        self.max_per_tenant = max_per_tenant
        self.positions: Positions = {}
        self._by_tenant: dict[str, set[Client]] = {}
        self._everyone: set[Client] = set()
        self.connections: Counter[tuple[str, Transport]] = Counter()
        #: Whether Kafka feeds the stream now; while not, local records do.
        self.kafka_feeding = False
        #: Whether records fed locally are dispatched when Kafka is not feeding.
        self.local_fallback = local_fallback
        # Edge-local records delivered and not yet seen again from Kafka: by
        # sequence number, oldest first (to bound them), and by value.
        self._local_seq = 0
        self._local_recent: OrderedDict[int, bytes] = OrderedDict()
        self._local_values: Values = {}
        self._newest_local_from = 0
        self.events_dropped = 0
        self.records_skipped = 0
        self.slow_disconnects = 0
        self.malformed = SampledLog("stream.malformed_record")

    # ----------------------------------------------------------------- clients
    def per_tenant(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for (key, _transport), count in self.connections.items():
            counts[key] += count
        return {key: count for key, count in counts.items() if count}

    def register(self, client: Client) -> None:
        """Count the client against its tenant and start sending it records."""
        key = client.limit_key
        if self.per_tenant().get(key, 0) >= self.max_per_tenant:
            raise TooManyConnections(
                f"tenant {key!r} already has {self.max_per_tenant} connections"
            )
        self.connections[(key, client.transport)] += 1
        client.queue.on_drop = self._count_drop
        self._local_start(client)
        if client.filters.tenant is None:
            self._everyone.add(client)
        else:
            self._by_tenant.setdefault(client.filters.tenant, set()).add(client)

    def unregister(self, client: Client) -> None:
        if client.queue.kicked:
            self.slow_disconnects += 1
        self.connections[(client.limit_key, client.transport)] -= 1
        if client.filters.tenant is None:
            self._everyone.discard(client)
        else:
            group = self._by_tenant.get(client.filters.tenant)
            if group is not None:
                group.discard(client)
                if not group:
                    del self._by_tenant[client.filters.tenant]

    @property
    def has_clients(self) -> bool:
        """Whether anyone at all is connected: with no one, a record needs no
        parsing, encoding or remembering (the daemon feeds every record here)."""
        return bool(self._everyone or self._by_tenant)

    @property
    def takes_local(self) -> bool:
        """Whether :meth:`publish_local` would deliver anything now."""
        return not self.kafka_feeding and self.local_fallback and self.has_clients

    def _count_drop(self) -> None:
        self.events_dropped += 1

    def skipped(self, records: int) -> None:
        """The Kafka consumer fell behind and skipped ``records`` to read the
        present again (bridge/stream/consumer.py): every client is told."""
        self.records_skipped += records
        for client in chain(self._everyone, *self._by_tenant.values()):
            client.queue.skipped(records)

    def positions_copy(self) -> Positions:
        return {topic: dict(parts) for topic, parts in self.positions.items()}

    def restart(self, client: Client) -> Positions:
        """Empty a registered client's queue and give the position it now
        starts from: as if it had been registered at this moment (an SSE
        client that waited for Kafka before its replay could start)."""
        client.queue.clear()
        self._local_start(client)
        return self.positions_copy()

    def _local_start(self, client: Client) -> None:
        client.local_from = self._local_seq + 1
        self._newest_local_from = client.local_from

    # ----------------------------------------------------------------- records
    #: Whether :meth:`publish_kafka` reads the record's headers (the consumer
    #: fetches them only then).
    wants_headers = False

    def publish_kafka(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        sent_at: str,
        headers: list[tuple[str, bytes]] | None = None,
        now_ms: int = 0,
    ) -> None:
        """One record read from Kafka: advance the position, then dispatch it.
        ``headers`` and ``now_ms`` are for the readers of :class:`EndpointHub`."""
        self.positions.setdefault(topic, {})[partition] = offset + 1
        local_seq = 0
        if self._local_values and value is not None:
            local_seq = self._seen_locally(value)
            if local_seq and local_seq >= self._newest_local_from:
                return  # every client was there when it was delivered locally
        if not self.has_clients:
            return
        try:
            self._publish((topic, partition, offset, local_seq), value, sent_at, headers, now_ms)
        except MalformedRecord as exc:
            self.malformed(topic=topic, partition=partition, offset=offset, reason=str(exc))

    def _seen_locally(self, value: bytes) -> int:
        """The sequence number of the oldest local delivery of a record with
        these bytes not yet matched by a copy from Kafka, or 0; matched now.

        Why a count and not a set: two readings of one device, metric, value
        and millisecond are byte-identical records; each local delivery
        matches one Kafka copy, so both copies are recognised, and a third
        (another instance's, say) is delivered.  Records with the same key go
        to the same partition, in the order they were produced.
        """
        seqs = self._local_values.get(value)
        if not seqs:
            return 0
        seq = seqs.popleft()
        if not seqs:
            del self._local_values[value]
        del self._local_recent[seq]
        return seq

    def _publish(
        self, at: At, value: bytes | None, sent_at: str, _headers: Hdrs, _now: int
    ) -> None:
        """Dispatch one record; :class:`MalformedRecord` when it cannot be read."""
        topic, partition, offset, local_seq = at
        record = parse_record(value)
        event_id = kafka_event_id(topic, partition, offset)
        self._dispatch(record, event_id, sent_at, topic, partition, offset, local_seq)

    def publish_local(self, value: bytes, sent_at: str) -> None:
        """A clean record from this daemon's own ingest (edge-local mode): sent
        only while Kafka is not feeding the stream."""
        if not self.takes_local:
            return
        try:
            record = parse_record(value)
        except MalformedRecord as exc:
            self.malformed(source="local", reason=str(exc))
            return
        self._local_seq += 1
        seq = self._local_seq
        self._local_recent[seq] = value
        self._local_values.setdefault(value, deque()).append(seq)
        if len(self._local_recent) > LOCAL_MEMORY:
            _old_seq, old_value = self._local_recent.popitem(last=False)
            seqs = self._local_values[old_value]
            seqs.popleft()  # the oldest of all is the oldest of its value
            if not seqs:
                del self._local_values[old_value]
        self._dispatch(record, f"local:{seq}", sent_at, None, -1, -1)

    def _dispatch(
        self,
        record: ParsedRecord,
        event_id: str,
        sent_at: str,
        topic: str | None,
        partition: int,
        offset: int,
        local_seq: int = 0,
    ) -> None:
        """``local_seq``: the record was delivered locally as that number; only
        clients registered after that do not have it yet."""
        tenant_clients: Iterable[Client] = self._by_tenant.get(record.tenant, ())
        if not tenant_clients and not self._everyone:
            return
        event = Event(
            record, encode_event(event_id, sent_at, record.json), topic, partition, offset
        )
        for client in chain(tenant_clients, self._everyone):
            if client.local_from <= local_seq or not client.wants(event):
                continue
            if client.transport is Transport.WEBSOCKET:
                if event.text is None:
                    event.text = event.json.decode()
            elif event.sse is None:
                cursor = encode_cursor(self.positions) if topic is not None else None
                event.sse = sse_frame(event.json, cursor)
            client.queue.put(event)


class EndpointHub(Hub):
    """The hub of a configured endpoint (``[[streams]]``): records are read by
    the endpoint's reader and rendered in its envelope, per metric filter, by
    each client's sender rather than here (the consumer's task only queues)."""

    def __init__(
        self,
        *,
        max_per_tenant: int,
        reader: Reader,
        envelope: EnvelopeRules,
        groups_of: Mapping[tuple[str, str], frozenset[str]],
    ) -> None:
        # An endpoint shows its own source's records only, never local ones.
        super().__init__(max_per_tenant=max_per_tenant, local_fallback=False)
        self.reader = reader
        self.envelope = envelope
        self.groups_of = groups_of
        self.wants_headers = isinstance(reader, MappingReader)

    def register(self, client: Client) -> None:
        client.groups_of = self.groups_of
        super().register(client)

    def _publish(self, at: At, value: bytes | None, sent_at: str, headers: Hdrs, now: int) -> None:
        topic, partition, offset, _local_seq = at
        try:
            item = self.reader(value, headers, now)
        except MalformedRecord:
            raise
        except Exception as exc:  # a reader's bug must not end the consumer's task
            raise MalformedRecord(f"unreadable record ({type(exc).__name__}: {exc})") from exc
        tenant_clients: Iterable[Client] = self._by_tenant.get(item.tenant, ())
        if not tenant_clients and not self._everyone:
            return
        render = partial(
            render_event,
            self.envelope,
            item,
            event_id=kafka_event_id(topic, partition, offset),
            sent_at=sent_at,
        )
        event = Event.of_item(item, render, topic, partition, offset)
        for client in chain(tenant_clients, self._everyone):
            if not client.wants(event):
                continue
            if event.cursor is None and client.transport is Transport.SSE:
                event.cursor = encode_cursor(self.positions)
            client.queue.put(event)
