"""One Server-Sent Events client at ``/sse/telemetry/stream/``.

Refusals are plain HTTP answers (401, 403, 429, 400) with a JSON body.  An
accepted client gets ``connected`` as its first event, then, when it
reconnects with ``Last-Event-ID`` (EventSource does so by itself), the events
it missed read again from Kafka, then the live stream.

Why replay and live cannot overlap or leave a gap: the client is registered
with the hub (its queue starts collecting live events) and the hub's position
is copied in the same synchronous step; the replay reads from the client's
cursor up to that position, the queue holds everything after it.  If the
queue overflowed meanwhile, or the replay hit its time or size bound, the
response ends after the last replayed event and the client's reconnection
resumes from there.

Where the live stream has no Kafka positions yet (the consumer is not
assigned just after a start, or Kafka is down), a resuming client waits for
them, bounded; then it starts afresh, as if registered at that moment (its
queue emptied, the positions copied again).  If they do not come in time, it
gets ``retry:`` and an ``error`` event and the response ends: EventSource
comes back with the same ``Last-Event-ID``.  Never a gap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
import trio
from confluent_kafka import KafkaException

from bridge.auth import Refused
from bridge.core.events import (
    CursorError,
    Positions,
    decode_cursor,
    error_message,
    iso_utc,
    ping_message,
    replay_ranges,
    sse_comment,
    sse_frame,
    sse_retry,
)
from bridge.io.http import BodyWriter, Request, Responder
from bridge.io.logs import SampledLog
from bridge.stream.gate import until_live
from bridge.stream.hub import Client, Event, Transport
from bridge.stream.pump import pump
from bridge.stream.replay import replay

if TYPE_CHECKING:
    from bridge.stream.gate import Gate

log = structlog.get_logger(__name__)

STREAM_HEADERS = [("cache-control", "no-cache"), ("x-accel-buffering", "no")]
#: How long a resuming client waits for Kafka to feed the stream (just after a
#: start, the consumer has no partitions yet) before it is told to come back.
RESUME_WAIT_S = 10.0
#: The reconnection delay given to a client told to come back (``retry:``).
RETRY_MS = 2000

#: Failures of the resume itself (a bug, not a bad cursor: that gets its own
#: error event), logged with a traceback at most every 10 s.
_resume_failures = SampledLog("stream.sse_resume_failed", level="error")


class _SseSink:
    def __init__(self, writer: BodyWriter, client: Client, form: str) -> None:
        self.write = writer.write
        self._client = client
        self._form = form

    async def events(self, events: list[Event]) -> None:
        client = self._client
        frames = [e.sse_for(client) for e in events]
        await self.write(b"".join(f for f in frames if f is not None))

    async def control(self, message: bytes) -> None:
        await self.write(sse_frame(message))

    async def ping(self, now_ns: int) -> None:
        if self._form == "comment":
            await self.write(sse_comment(f"ping {iso_utc(now_ns)}"))
        elif self._form == "json":
            await self.control(ping_message(now_ns))


def _cursor_text(request: Request) -> str:
    """``Last-Event-ID`` as EventSource sends it, or ``?last_event_id=`` for
    clients that cannot set headers on their first connection."""
    header = request.headers.get("last-event-id", "").strip()
    if header:
        return header
    return next((v for v in request.query.get("last_event_id", []) if v), "")


async def _come_back(sink: _SseSink, why: str) -> bool:
    """Tell the client to reconnect with the same cursor in a moment, and end
    the response: better than going on with a gap."""
    await sink.write(sse_retry(RETRY_MS))
    await sink.control(error_message(f"{why}: reconnect to resume"))
    return False


async def _resume(
    service: Gate, request: Request, client: Client, seam: Positions, sink: _SseSink
) -> bool:
    """Replay what a reconnecting client missed.  False: end the response now
    (the client reconnects from its last event)."""
    text = _cursor_text(request)
    if not text:
        return True
    try:
        cursor = decode_cursor(text)
    except CursorError as exc:
        await sink.control(error_message(f"Last-Event-ID not understood ({exc}): live events only"))
        return True
    dropped_before = 0
    source = service.source
    if source is None:
        await sink.control(error_message("this stream does not read Kafka: live events only"))
        return True
    if not source.live:
        # Kafka is reachable or not, or the source was paused for want of
        # clients (it moves to the present now that this one came); either way
        # the live stream does not have its positions yet, and only they tell
        # where the replay must end.
        if not await source.wait_feeding(min(RESUME_WAIT_S, service.settings.replay_timeout_s)):
            return await _come_back(sink, "Kafka does not feed the stream yet")
        if client.queue.kicked:
            return False
        # Start the client afresh from here: what it was sent meanwhile is
        # before the new seam, and the replay reads it.
        seam = service.hub.restart(client)
        dropped_before = client.queue.dropped_total
    ranges = replay_ranges(cursor, seam, service.settings.topics)
    with trio.CancelScope() as scope:
        # Kicked for overflowing while the replay ran: stop it, end the response.
        client.queue.on_kick = scope.cancel
        async with service.replay_slots:
            try:
                outcome = await replay(
                    ranges,
                    cursor,
                    client.filters,
                    sink.write,
                    kafka=service.kafka,
                    stream=service.settings,
                    event=service.replay_event,
                )
            except KafkaException as exc:
                log.info("stream.sse_resume_deferred", remote=request.remote, error=str(exc))
                return await _come_back(sink, "Kafka did not answer in time")
    if scope.cancelled_caught:
        log.info("stream.sse_resume_cut", remote=request.remote, reason="queue overflowed")
        return False
    if outcome.unknown:
        named = ", ".join(outcome.unknown[:5])
        await sink.control(
            error_message(
                f"Last-Event-ID names partitions that do not exist ({named}): live events only"
            )
        )
        return True
    for topic, parts in outcome.positions.items():
        for partition, position in parts.items():
            live = seam.get(topic, {}).get(partition)
            if live is None or position > live:
                client.skip_below[(topic, partition)] = position
    complete = outcome.complete and client.queue.dropped_total == dropped_before
    log.info(
        "stream.sse_resumed",
        remote=request.remote,
        events=outcome.events,
        partitions=len(ranges),
        complete=complete,
    )
    return complete


async def _resume_guarded(
    service: Gate, request: Request, client: Client, seam: Positions, sink: _SseSink
) -> bool:
    """:func:`_resume` behind a crash barrier: whatever a cursor makes go wrong
    ends this client's response (it reconnects), never the server."""
    try:
        return await _resume(service, request, client, seam, sink)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise  # the client went away
    except Exception as exc:
        _resume_failures(remote=request.remote, error=type(exc).__name__, exc_info=exc)
        return await _come_back(sink, "internal error while resuming")


async def sse_session(service: Gate, request: Request, responder: Responder) -> None:
    cors = service.cors_headers(request)
    await until_live(service)
    await service.prepare(request, [])
    try:
        client = service.admit(Transport.SSE, request, [])
    except Refused as exc:
        body = {"error": exc.refusal.name.lower(), "message": str(exc)}
        await responder.send_json(exc.http_status, body, headers=cors)
        return
    try:
        seam = service.hub.positions_copy()
        writer = await responder.start_stream(200, "text/event-stream", STREAM_HEADERS + cors)
        keepalive = service.keepalive
        sink = _SseSink(writer, client, keepalive.sse)
        welcome = service.welcome(client)
        if welcome is not None:
            await sink.control(welcome)
        # Counter ids say nothing about Kafka: such a client resumes live.
        if client.sse_counter is not None or await _resume_guarded(
            service, request, client, seam, sink
        ):
            settings = service.settings
            await pump(
                client,
                sink,
                ping_interval_s=keepalive.sse_interval_s or keepalive.interval_s,
                grace_s=settings.slow_client_grace_s,
            )
    finally:
        service.release(client, request.remote)
