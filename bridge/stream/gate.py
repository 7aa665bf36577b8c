"""What a WebSocket or SSE session needs of the endpoint it serves: the
built-in one (:class:`bridge.stream.service.StreamService`) or one declared in
``[[streams]]`` (:class:`bridge.stream.endpoint.Endpoint`).  The sessions are
written against this, so both contracts share one implementation of the
transports, the pump and the replay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import structlog
import trio

from bridge.auth import Refused
from bridge.core.events import Filters
from bridge.core.settings import KafkaSettings, StreamKeepalive, StreamSettings
from bridge.io.http import Request
from bridge.stream.consumer import KafkaSource, KafkaState
from bridge.stream.hub import Client, Hub, Transport
from bridge.stream.replay import EventOf

log = structlog.get_logger("bridge.stream.service")


class Gate(Protocol):
    @property
    def settings(self) -> StreamSettings: ...

    @property
    def hub(self) -> Hub: ...

    @property
    def kafka(self) -> KafkaSettings: ...

    @property
    def replay_slots(self) -> trio.Semaphore: ...

    @property
    def kafka_state(self) -> KafkaState: ...

    @property
    def source(self) -> KafkaSource | None: ...

    @property
    def keepalive(self) -> StreamKeepalive: ...

    async def prepare(self, request: Request, subprotocols: list[str]) -> None:
        """Before :meth:`admit`: fetch what verifying the token needs (an
        identity provider's keys); never raises."""
        ...

    def admit(self, transport: Transport, request: Request, subprotocols: list[str]) -> Client: ...

    def release(self, client: Client, remote: str) -> None: ...

    def cors_headers(self, request: Request) -> list[tuple[str, str]]: ...

    def welcome(self, client: Client) -> bytes | None:
        """The first message, or None to send none."""
        ...

    @property
    def replay_event(self) -> EventOf:
        """How a record read again for a resuming SSE client becomes its event."""
        ...

    def apply_action(self, filters: Filters, message: str | bytes) -> tuple[Filters, bytes]:
        """A client's live action -> its new filters and the reply."""
        ...


def admitted(
    transport: Transport,
    request: Request,
    build: Callable[[], tuple[Client, str | None]],
    **context: object,
) -> Client:
    """Run an endpoint's admission (``build``: the client and the token's
    subject, or :class:`Refused`) and log the outcome either way."""
    try:
        client, subject = build()
    except Refused as exc:
        log.info(
            "stream.client_refused",
            transport=transport.value,
            remote=request.remote,
            reason=exc.refusal.name.lower(),
            detail=str(exc),
            **context,
        )
        raise
    log.info(
        "stream.client_connected",
        transport=transport.value,
        remote=request.remote,
        tenant=client.limit_key,
        role=client.role,
        subject=subject,
        **context,
    )
    return client


#: How long a connecting client waits for a paused source to read again
#: before it is answered anyway (Kafka went away meanwhile, say).
LIVE_WAIT_S = 5.0


async def until_live(gate: Gate) -> None:
    """Before a client's handshake is answered: wake its source if it was
    paused for want of clients (bridge/stream/consumer.py) and wait, bounded,
    until it has moved to the present and reads again, so that whatever is
    written once the client is connected reaches it."""
    source = gate.source
    if source is not None and source.paused:
        source.expect_client()
        # Only a source Kafka feeds is waited for: while Kafka is away (edge-
        # local records, or nothing) there is nothing to wait for.
        if source.state == "ok":
            await source.wait_feeding(LIVE_WAIT_S)


def released(hub: Hub, client: Client, remote: str, **context: object) -> None:
    """Take a client off its hub and log it."""
    hub.unregister(client)
    log.info(
        "stream.client_disconnected",
        transport=client.transport.value,
        remote=remote,
        tenant=client.limit_key,
        dropped=client.queue.dropped_total,
        too_slow=client.queue.kicked,
        **context,
    )
