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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
import trio

from bridge.auth import Refused
from bridge.core.events import (
    CursorError,
    Positions,
    connected_message,
    decode_cursor,
    error_message,
    iso_utc,
    replay_ranges,
    sse_comment,
    sse_frame,
)
from bridge.io.http import BodyWriter, Request, Responder
from bridge.stream.hub import Client, Event, Transport
from bridge.stream.pump import pump
from bridge.stream.replay import replay

if TYPE_CHECKING:
    from bridge.stream.service import StreamService

log = structlog.get_logger(__name__)

STREAM_HEADERS = [("cache-control", "no-cache"), ("x-accel-buffering", "no")]


class _SseSink:
    def __init__(self, writer: BodyWriter) -> None:
        self.write = writer.write

    async def events(self, events: list[Event]) -> None:
        await self.write(b"".join(e.sse for e in events if e.sse is not None))

    async def control(self, message: bytes) -> None:
        await self.write(sse_frame(message))

    async def ping(self, now_ns: int) -> None:
        await self.write(sse_comment(f"ping {iso_utc(now_ns)}"))


def _cursor_text(request: Request) -> str:
    """``Last-Event-ID`` as EventSource sends it, or ``?last_event_id=`` for
    clients that cannot set headers on their first connection."""
    header = request.headers.get("last-event-id", "").strip()
    if header:
        return header
    return next((v for v in request.query.get("last_event_id", []) if v), "")


async def _resume(
    service: StreamService, request: Request, client: Client, seam: Positions, sink: _SseSink
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
    if service.kafka_state != "ok":
        await sink.control(
            error_message("cannot resume while Kafka is not reachable: live events only")
        )
        return True
    ranges = replay_ranges(cursor, seam, service.settings.topics)
    with trio.CancelScope() as scope:
        # Kicked for overflowing while the replay ran: stop it, end the response.
        client.queue.on_kick = scope.cancel
        async with service.replay_slots:
            outcome = await replay(
                ranges,
                cursor,
                client.filters,
                sink.write,
                kafka=service.kafka,
                stream=service.settings,
            )
    if scope.cancelled_caught:
        log.info("stream.sse_resume_cut", remote=request.remote, reason="queue overflowed")
        return False
    for topic, parts in outcome.positions.items():
        for partition, position in parts.items():
            live = seam.get(topic, {}).get(partition)
            if live is None or position > live:
                client.skip_below[(topic, partition)] = position
    complete = outcome.complete and not client.queue.dropped_total
    log.info(
        "stream.sse_resumed",
        remote=request.remote,
        events=outcome.events,
        partitions=len(ranges),
        complete=complete,
    )
    return complete


async def sse_session(service: StreamService, request: Request, responder: Responder) -> None:
    cors = service.cors_headers(request)
    try:
        client = service.admit(Transport.SSE, request, [])
    except Refused as exc:
        body = {"error": exc.refusal.name.lower(), "message": str(exc)}
        await responder.send_json(exc.refusal.http_status, body, headers=cors)
        return
    try:
        seam = service.hub.positions_copy()
        writer = await responder.start_stream(200, "text/event-stream", STREAM_HEADERS + cors)
        sink = _SseSink(writer)
        await sink.control(connected_message(client.filters, client.role))
        if await _resume(service, request, client, seam, sink):
            settings = service.settings
            await pump(
                client,
                sink,
                ping_interval_s=settings.ping_interval_s,
                grace_s=settings.slow_client_grace_s,
            )
    finally:
        service.release(client, request.remote)
