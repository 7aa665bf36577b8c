"""Dead letters, live: every refused message with its reason, detail, MQTT
topic and original payload, to the console's WebSocket
``/ws/console/dead-letters/``.

Sources, as for the telemetry stream's edge-local mode: the mappings'
dead-letter topics read from Kafka (so dead letters of every bridge instance
show), and, while that consumer is not fed by Kafka, the dead letters this
daemon's own ingest makes.  Letters delivered locally are remembered and
skipped when they come back from Kafka after an outage.

Tenant isolation: a dead-letter record carries no tenant, so its tenant is
found again from its MQTT topic with the mapping that refused it (the
``{tenant}`` segment, a constant, or the payload field the mapping reads).  A
client token sees only its tenant's dead letters; a letter whose tenant cannot
be told (the payload was not JSON and the tenant lives in it) is shown to
admins only.

The last :data:`BACKLOG` letters are kept so that a page opened after the
fact still shows them; each payload is cut to :data:`MAX_PAYLOAD_CHARS`
characters for the console.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

import msgspec
import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from bridge.auth import Authenticator, Principal, Refusal, Refused, find_token, select_subprotocol
from bridge.core.events import Positions
from bridge.core.plan import Plan
from bridge.core.records import DeadLetter, Outgoing
from bridge.core.sparkplug_mapping import topic_segments
from bridge.io.http import Request
from bridge.io.logs import SampledLog

log = structlog.get_logger(__name__)

PATH = "/ws/console/dead-letters/"
BACKLOG = 100
MAX_PAYLOAD_CHARS = 4096
#: Letters waiting for one slow page before the oldest are dropped.
CLIENT_QUEUE = 256
MAX_WATCHERS = 64
LOCAL_MEMORY = 1000
CLOSE_TIMEOUT_S = 2.0

_decode_letter = msgspec.json.Decoder(DeadLetter).decode


class Shown(msgspec.Struct, kw_only=True):
    """One dead letter as the console receives it."""

    type: str = "dead_letter"
    tenant: str | None
    source: str
    reason: str
    detail: str
    mqtt_topic: str
    mapping: str | None
    metric: str | None
    payload: str
    payload_encoding: str
    payload_truncated: bool
    received_at: str


def dead_letter_topics(plan: Plan) -> list[str]:
    """Every mapping's dead-letter topic, once each, sorted."""
    return sorted({m.dead_letter_topic for m in plan.mappings})


def letter_tenant(plan: Plan, letter: DeadLetter) -> str | None:
    """The tenant the refused message belonged to, or None when it cannot be
    told.  Found with the mapping that refused it (by name, else the first
    whose filter matches the topic), the way ingest reads the tenant."""
    levels = letter.mqtt_topic.split("/")
    for mapping in plan.mappings:
        if letter.mapping is not None and mapping.name != letter.mapping:
            continue
        segments = mapping.filter.match(levels)
        if segments is None:
            continue
        if mapping.sparkplug is not None:
            segments.update(topic_segments(letter.mqtt_topic))
        tenant = mapping.tenant(segments, {})
        if not isinstance(tenant, str) and letter.payload_encoding == "utf-8":
            try:
                doc = msgspec.json.decode(letter.payload)
            except (msgspec.DecodeError, RecursionError):
                return None
            tenant = mapping.tenant(segments, doc) if isinstance(doc, dict) else None
        return tenant if isinstance(tenant, str) and tenant else None
    return None


def shown(plan: Plan, letter: DeadLetter, source: str) -> Shown:
    payload = letter.payload
    return Shown(
        tenant=letter_tenant(plan, letter),
        source=source,
        reason=letter.reason,
        detail=letter.detail,
        mqtt_topic=letter.mqtt_topic,
        mapping=letter.mapping,
        metric=letter.metric,
        payload=payload[:MAX_PAYLOAD_CHARS],
        payload_encoding=letter.payload_encoding,
        payload_truncated=len(payload) > MAX_PAYLOAD_CHARS,
        received_at=letter.received_at,
    )


class Watcher:
    """One console watching dead letters: the tenant it may see (None: all)."""

    def __init__(self, tenant: str | None) -> None:
        self.tenant = tenant
        self.send, self.receive = trio.open_memory_channel[str](CLIENT_QUEUE)
        self.dropped = 0

    def sees(self, tenant: str | None) -> bool:
        return self.tenant is None or self.tenant == tenant


class _Entry:
    """A dead letter as it arrived, rendered for the console only when some
    console wants it: with nobody watching, a refused message costs this
    feed one append (a flood of bad input must not cost more CPU here)."""

    __slots__ = ("rendered", "source", "value")

    def __init__(self, value: bytes, source: str) -> None:
        self.value = value
        self.source = source
        self.rendered: tuple[str | None, str] | None = None


class DeadLetterFeed:
    """The backlog, the watchers, and the two sources.  Has what
    :class:`bridge.stream.consumer.KafkaSource` feeds (``positions``,
    ``kafka_feeding``, :meth:`publish_kafka`)."""

    def __init__(self, plan: Callable[[], Plan]) -> None:
        self._plan = plan
        self.positions: Positions = {}
        self.kafka_feeding = False
        self.backlog: deque[_Entry] = deque(maxlen=BACKLOG)
        self.watchers: set[Watcher] = set()
        self.seen_total = 0
        self._local_recent: OrderedDict[bytes, None] = OrderedDict()
        self._topics: tuple[Plan | None, frozenset[str]] = (None, frozenset())
        self._malformed = SampledLog("console.malformed_dead_letter")

    # ----------------------------------------------------------------- sources
    def publish_kafka(
        self, topic: str, partition: int, offset: int, value: bytes | None, sent_at: str
    ) -> None:
        self.positions.setdefault(topic, {})[partition] = offset + 1
        if value is None:
            return
        if value in self._local_recent:
            del self._local_recent[value]
            return
        self._publish(value, "kafka")

    def skipped(self, records: int) -> None:
        """The consumer skipped records it fell behind on: the feed shows the
        newest dead letters, nothing to tell."""

    def publish_local(self, records: Iterable[Outgoing]) -> None:
        """The records of one message ingest refused in part or whole; its
        dead letters are shown while Kafka does not feed this feed."""
        if self.kafka_feeding:
            return
        topics = self._dead_letter_topics()
        for record in records:
            if record.topic in topics and record.headers and record.headers[0][0] == "reason":
                self._local_recent[record.value] = None
                if len(self._local_recent) > LOCAL_MEMORY:
                    self._local_recent.popitem(last=False)
                self._publish(record.value, "local")

    def _dead_letter_topics(self) -> frozenset[str]:
        plan = self._plan()
        if self._topics[0] is not plan:
            self._topics = (plan, frozenset(dead_letter_topics(plan)))
        return self._topics[1]

    def _publish(self, value: bytes, source: str) -> None:
        entry = _Entry(value, source)
        self.backlog.append(entry)
        self.seen_total += 1
        if not self.watchers:
            return
        tenant, text = self._render(entry)
        for watcher in self.watchers:
            if text and watcher.sees(tenant):
                _offer(watcher, text)

    def _render(self, entry: _Entry) -> tuple[str | None, str]:
        """(tenant, JSON text) of an entry; empty text when it is no dead letter."""
        if entry.rendered is None:
            try:
                letter = _decode_letter(entry.value)
            except msgspec.DecodeError as exc:
                self._malformed(source=entry.source, reason=str(exc))
                entry.rendered = (None, "")
            else:
                item = shown(self._plan(), letter, entry.source)
                entry.rendered = (item.tenant, msgspec.json.encode(item).decode())
        return entry.rendered

    # ----------------------------------------------------------------- watchers
    def watch(self, tenant: str | None) -> Watcher:
        if len(self.watchers) >= MAX_WATCHERS:
            raise Refused(Refusal.TOO_MANY, f"at most {MAX_WATCHERS} dead-letter watchers")
        watcher = Watcher(tenant)
        for entry in self.backlog:
            letter_tenant_, text = self._render(entry)
            if text and watcher.sees(letter_tenant_):
                _offer(watcher, text)
        self.watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)
        watcher.send.close()


def _offer(watcher: Watcher, text: str) -> None:
    try:
        watcher.send.send_nowait(text)
    except trio.WouldBlock:
        watcher.dropped += 1


def watcher_tenant(principal: Principal, query: dict[str, list[str]]) -> str | None:
    """A client sees its own tenant only; an admin every tenant, or the one
    named with ``?tenant=``."""
    if not principal.is_admin:
        return principal.tenant
    asked = [t for t in query.get("tenant", []) if t]
    return asked[0] if asked else None


async def dead_letter_session(
    feed: DeadLetterFeed,
    auth: Callable[[], Authenticator],
    origin_allowed: Callable[[Request], bool],
    request: Request,
    ws_request: WebSocketRequest,
) -> None:
    """One console: ``connected``, the backlog, then live letters, until it closes.
    A refusal is a close code (4001, 4003, 4029) as on the telemetry stream,
    whose origin rule (``stream.allow_origins`` or the page's own host) holds
    here too."""
    proposed = list(ws_request.proposed_subprotocols)
    try:
        ws = await ws_request.accept(subprotocol=select_subprotocol(proposed))
    except ConnectionClosed:
        return
    code, reason = 1000, "bye"
    try:
        if not origin_allowed(request):
            raise Refused(Refusal.FORBIDDEN, "origin not in stream.allow_origins")
        principal = auth().verify(find_token(request.query, request.headers, proposed))
        watcher = feed.watch(watcher_tenant(principal, request.query))
    except Refused as exc:
        code, reason = exc.refusal.close_code, str(exc)
    else:
        try:
            await _serve(ws, watcher)
        except ConnectionClosed:
            pass
        finally:
            feed.unwatch(watcher)
    finally:
        if ws.closed is None:
            with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await ws.aclose(code, reason[:120])


async def _serve(ws: WebSocketConnection, watcher: Watcher) -> None:
    hello = msgspec.json.encode({"type": "connected", "tenant": watcher.tenant})
    await ws.send_message(hello.decode())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_until_closed, ws, nursery.cancel_scope)
        async for text in watcher.receive:
            await ws.send_message(text)


async def _until_closed(ws: WebSocketConnection, scope: trio.CancelScope) -> None:
    """Messages from the page are ignored; its close ends the session."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        scope.cancel()
