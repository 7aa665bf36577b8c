"""One WebSocket client at ``/ws/telemetry/stream/``.

The handshake is always accepted (with the ``bearer`` subprotocol when the
browser offered its token that way) and a refusal is reported as a close code:
a browser does not let a page see why a handshake failed, but it does show
``CloseEvent.code``.  Then: ``connected``, and two tasks, the sender
(:func:`bridge.stream.pump.pump`) and the receiver of filter changes, whose
acknowledgement is sent as soon as the new filters apply.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from bridge.auth import Refused, select_subprotocol
from bridge.core.events import error_message, ping_message
from bridge.io.http import Request
from bridge.io.logs import SampledLog
from bridge.stream.gate import until_live
from bridge.stream.hub import Client, Event, Transport
from bridge.stream.pump import pump

if TYPE_CHECKING:
    from bridge.stream.gate import Gate


#: Bound on the closing handshake; a client that does not answer is cut off.
CLOSE_TIMEOUT_S = 2.0
#: The same bound while the daemon stops.  Shutdown cancels trio-websocket's
#: reader task together with this session, so the client's close reply can no
#: longer be read and waiting for it only delays the exit (by the whole
#: CLOSE_TIMEOUT_S, for every stop with a client connected).  The close frame
#: itself is written at once; this is just time for it to leave.
SHUTDOWN_CLOSE_TIMEOUT_S = 0.1
#: A close frame's reason must fit in 123 bytes.
MAX_REASON = 120
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011


class _WebSocketSink:
    def __init__(
        self, ws: WebSocketConnection, client: Client, gate: Gate, nursery: trio.Nursery
    ) -> None:
        self._ws = ws
        self._client = client
        self._form = gate.keepalive.websocket
        self._interval = gate.keepalive.interval_s
        self._nursery = nursery

    async def events(self, events: list[Event]) -> None:
        client = self._client
        filters = client.filters
        for event in events:
            # The filters may change while the batch is sent: check again then.
            if client.filters is not filters and not client.wants(event):
                continue
            text = event.text_for(client)
            if text is not None:
                await self._ws.send_message(text)

    async def control(self, message: bytes) -> None:
        await self._ws.send_message(message.decode())

    async def ping(self, now_ns: int) -> None:
        if self._form == "json":
            await self.control(ping_message(now_ns))
        elif self._form == "ping":
            # trio-websocket's ping() waits for the pong: not in the sender.
            self._nursery.start_soon(self._ping_frame)

    async def _ping_frame(self) -> None:
        with trio.move_on_after(self._interval), contextlib.suppress(ConnectionClosed):
            await self._ws.ping()


#: Failures of the action handler itself (a bug, not a bad message: those get
#: their own error reply), logged with a traceback at most every 10 s.
_action_failures = SampledLog("stream.websocket_action_failed", level="error")
_session_failures = SampledLog("stream.websocket_failed", level="error")


def _handle(gate: Gate, client: Client, message: str | bytes, remote: str) -> bytes:
    """Apply one client message; the reply.  Nothing a client sends may end its
    connection, let alone another's: whatever goes wrong becomes an ``error``
    reply and the filters stay as they were."""
    try:
        filters, reply = gate.apply_action(client.filters, message)
        client.filters = filters
        client.queue.retain(client.wants)
    except Exception as exc:
        _action_failures(remote=remote, error=type(exc).__name__, exc_info=exc)
        return error_message("internal error handling this action; filters unchanged")
    return reply


async def _receive(
    gate: Gate, ws: WebSocketConnection, client: Client, scope: trio.CancelScope, remote: str
) -> None:
    """Filter changes until the client closes; then end the session."""
    try:
        while True:
            message = await ws.get_message()
            await ws.send_message(_handle(gate, client, message, remote).decode())
    except ConnectionClosed:
        pass
    scope.cancel()


async def _serve(gate: Gate, ws: WebSocketConnection, client: Client, remote: str) -> str | None:
    """Run an admitted client; the reason to close it with 1008, or None."""
    settings = gate.settings
    welcome = gate.welcome(client)
    if welcome is not None:
        await ws.send_message(welcome.decode())
    stuck: bool | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_receive, gate, ws, client, nursery.cancel_scope, remote)
        with contextlib.suppress(ConnectionClosed):
            stuck = await pump(
                client,
                _WebSocketSink(ws, client, gate, nursery),
                ping_interval_s=gate.keepalive.interval_s,
                grace_s=settings.slow_client_grace_s,
            )
        nursery.cancel_scope.cancel()
    if stuck is None:
        return None
    return f"too slow: more than {client.queue.max_drops} events dropped" + (
        " (not reading)" if stuck else ""
    )


async def websocket_session(service: Gate, request: Request, ws_request: WebSocketRequest) -> None:
    proposed = list(ws_request.proposed_subprotocols)
    await until_live(service)
    try:
        ws = await ws_request.accept(subprotocol=select_subprotocol(proposed))
    except ConnectionClosed:
        return
    code, reason = GOING_AWAY, "server shutting down"
    try:
        try:
            await service.prepare(request, proposed)
            client = service.admit(Transport.WEBSOCKET, request, proposed)
        except Refused as exc:
            code, reason = exc.close_code, str(exc)
            return
        try:
            slow = await _serve(service, ws, client, request.remote)
            if slow is not None:
                code, reason = POLICY_VIOLATION, slow
        except ConnectionClosed:
            pass
        finally:
            service.release(client, request.remote)
    except Exception as exc:
        # This client only: closed with 1011, logged at most every 10 s.
        _session_failures(remote=request.remote, error=type(exc).__name__, exc_info=exc)
        code, reason = INTERNAL_ERROR, "internal error"
    finally:
        if ws.closed is None:
            stopping = trio.current_effective_deadline() == -math.inf
            timeout = SHUTDOWN_CLOSE_TIMEOUT_S if stopping else CLOSE_TIMEOUT_S
            with trio.move_on_after(timeout, shield=True):
                await ws.aclose(code, reason[:MAX_REASON])
