"""The live stream's entry point: :func:`run_stream` binds the listen address,
starts the Kafka consumer and serves WebSocket, SSE and the status on it.

The daemon starts it in its nursery and gets the :class:`StreamService` back::

    service = await nursery.start(run_stream, config)       # listening now
    service.router.add("/metrics", metrics_handler)          # more GET routes
    service.status()                                         # connections, Kafka state
    service.feed_local(clean_record_bytes)                   # edge-local mode

Routes can also be given up front: ``run_stream(config, extra_routes={...})``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import partial

import msgspec
import structlog
import trio

from bridge.auth import Authenticator, Refusal, Refused, find_token
from bridge.config import Config, StreamSettings
from bridge.core.events import FilterError, TenantForbidden, initial_filters, iso_utc
from bridge.io.http import (
    HttpHandler,
    HttpServer,
    Request,
    Responder,
    Router,
    bound_addresses,
    open_listeners,
)
from bridge.stream.consumer import KafkaSource, KafkaState
from bridge.stream.hub import Client, ClientQueue, Hub, TooManyConnections, Transport
from bridge.stream.sse import sse_session
from bridge.stream.websocket import websocket_session

log = structlog.get_logger(__name__)

WEBSOCKET_PATH = "/ws/telemetry/stream/"
SSE_PATH = "/sse/telemetry/stream/"
STATUS_PATH = "/api/stream/status"
#: Request headers a page may send cross-origin (CORS preflight), and how long
#: a browser may keep that answer.
PREFLIGHT_HEADERS = "authorization, last-event-id, cache-control"
PREFLIGHT_MAX_AGE_S = 600


class PartitionStatus(msgspec.Struct):
    """Where the stream is in one partition; ``lag`` from librdkafka's
    statistics (every 5 s), None until they arrive."""

    topic: str
    partition: int
    position: int | None
    high_watermark: int | None
    lag: int | None


class StreamStatus(msgspec.Struct):
    """``GET /api/stream/status``, and what the metrics read."""

    total_connections: int
    per_tenant: dict[str, int]
    max_per_tenant: int
    source: str
    kafka_state: KafkaState
    topics: list[str]
    #: transport (websocket, sse) -> tenant ("*" for admins watching all) -> count
    connections: dict[str, dict[str, int]]
    events_dropped: int
    slow_disconnects: int
    malformed_records: int
    partitions: list[PartitionStatus]


class StreamSettingsError(ValueError):
    """Stream settings that cannot work together."""


def check_settings(settings: StreamSettings) -> None:
    """One batch from Kafka is dispatched at once, so a client queue smaller
    than a batch would make even the fastest client lose events."""
    if settings.client_queue < settings.consume_batch:
        raise StreamSettingsError(
            f"stream.client_queue ({settings.client_queue}) must be at least "
            f"stream.consume_batch ({settings.consume_batch})"
        )


class StreamService:
    """The running stream: hub, Kafka source, auth, routes."""

    def __init__(
        self,
        config: Config,
        addresses: list[tuple[str, int]],
        auth: Authenticator | None = None,
    ) -> None:
        check_settings(config.stream)
        self.settings = config.stream
        self.kafka = config.kafka
        self.auth = auth or Authenticator(config.auth)
        self.auth.log_warnings()
        self.hub = Hub(max_per_tenant=config.stream.max_per_tenant)
        self.hub.local_fallback = config.stream.source != "kafka"
        self.source = (
            KafkaSource(config.kafka, config.stream, self.hub)
            if config.stream.source != "local"
            else None
        )
        self.addresses = addresses
        self.router = Router()
        self.replay_slots = trio.Semaphore(max(1, config.stream.replay_concurrency))

    def reload(self, config: Config, auth: Authenticator | None = None) -> None:
        """New limits, keys and timings for the next connections; open ones
        keep going.  Topics, source and Kafka settings need a restart.
        ``auth``: the authenticator already built from ``config.auth`` (the
        daemon builds and checks everything before a reload changes anything).

        All or nothing: settings that cannot work raise (AuthConfigError,
        StreamSettingsError) before anything changes.
        """
        check_settings(config.stream)
        auth = auth or Authenticator(config.auth)
        auth.log_warnings()
        self.auth = auth
        self.settings = msgspec.structs.replace(
            config.stream, topics=self.settings.topics, source=self.settings.source
        )
        self.hub.max_per_tenant = config.stream.max_per_tenant

    @property
    def kafka_state(self) -> KafkaState:
        return self.source.state if self.source is not None else "disabled"

    def feed_local(self, value: bytes) -> None:
        """A clean record (the exact value produced to Kafka) from this daemon's
        ingest; reaches clients only while Kafka does not feed the stream.
        Called for every clean record: it does nothing else unless it delivers
        (the time string alone cost 15% of the ingest CPU, docs/benchmarks.md)."""
        if self.hub.takes_local:
            self.hub.publish_local(value, iso_utc(time.time_ns()))

    def status(self) -> StreamStatus:
        hub = self.hub
        connections: dict[str, dict[str, int]] = {t.value: {} for t in Transport}
        for (tenant, transport), count in hub.connections.items():
            if count:
                connections[transport.value][tenant] = count
        per_tenant = hub.per_tenant()
        partitions = []
        marks = self.source.high_watermarks if self.source is not None else {}
        for topic, parts in sorted(hub.positions.items()):
            for partition, position in sorted(parts.items()):
                high = marks.get((topic, partition))
                lag = max(0, high - position) if high is not None else None
                partitions.append(PartitionStatus(topic, partition, position, high, lag))
        return StreamStatus(
            total_connections=sum(per_tenant.values()),
            per_tenant=per_tenant,
            max_per_tenant=hub.max_per_tenant,
            source="kafka" if hub.kafka_feeding or not hub.local_fallback else "local",
            kafka_state=self.kafka_state,
            topics=list(self.settings.topics),
            connections=connections,
            events_dropped=hub.events_dropped,
            slow_disconnects=hub.slow_disconnects,
            malformed_records=hub.malformed.total,
            partitions=partitions,
        )

    def origin_allowed(self, request: Request) -> bool:
        """Whether a page of the request's ``Origin`` may use the stream: listed
        in ``stream.allow_origins`` (``*``: any), or the page's own host (the
        ``Host`` the request was sent to, as behind a reverse proxy that serves
        the dashboard too).  No ``Origin`` at all is a client that is not a
        browser (curl, a service): nothing to protect it from."""
        origin = request.headers.get("origin")
        if origin is None:
            return True
        allowed = self.settings.allow_origins
        if "*" in allowed or origin in allowed:
            return True
        _scheme, sep, authority = origin.partition("://")
        host = request.headers.get("host")
        return bool(sep) and host is not None and authority.lower() == host.lower()

    def cors_headers(self, request: Request) -> list[tuple[str, str]]:
        origin = request.headers.get("origin")
        if origin and self.origin_allowed(request):
            return [("access-control-allow-origin", origin), ("vary", "origin")]
        return []

    async def preflight(self, request: Request, responder: Responder) -> None:
        """``OPTIONS``: what a page of an allowed origin may send, so that a
        ``fetch()`` with an ``Authorization`` header gets through CORS."""
        if request.headers.get("origin") is None or not self.origin_allowed(request):
            body = {"error": "forbidden", "message": "origin not in stream.allow_origins"}
            await responder.send_json(403, body, headers=[("vary", "origin")])
            return
        headers = [
            *self.cors_headers(request),
            ("access-control-allow-methods", "GET, OPTIONS"),
            ("access-control-allow-headers", PREFLIGHT_HEADERS),
            ("access-control-max-age", str(PREFLIGHT_MAX_AGE_S)),
        ]
        await responder.send(204, b"", "text/plain", headers)

    def admit(self, transport: Transport, request: Request, subprotocols: list[str]) -> Client:
        """Check the origin, authenticate, build the filters, count the
        connection: the client, or :class:`Refused` with the close code /
        status to report.  A refused origin is refused first, so it never
        counts against the tenant's limit."""
        token = find_token(request.query, request.headers, subprotocols)
        try:
            if not self.origin_allowed(request):
                origin = request.headers.get("origin", "")[:100]
                raise Refused(
                    Refusal.FORBIDDEN, f"origin {origin!r} is not in stream.allow_origins"
                )
            principal = self.auth.verify(token)
            try:
                filters = initial_filters(
                    is_admin=principal.is_admin, own_tenant=principal.tenant, query=request.query
                )
            except TenantForbidden as exc:
                raise Refused(Refusal.FORBIDDEN, str(exc)) from None
            except FilterError as exc:
                raise Refused(Refusal.BAD_REQUEST, str(exc)) from None
            settings = self.settings
            client = Client(
                transport,
                filters,
                principal.role,
                ClientQueue(settings.client_queue, settings.max_lag_drops),
            )
            try:
                self.hub.register(client)
            except TooManyConnections as exc:
                raise Refused(Refusal.TOO_MANY, str(exc)) from None
        except Refused as exc:
            log.info(
                "stream.client_refused",
                transport=transport.value,
                remote=request.remote,
                reason=exc.refusal.name.lower(),
                detail=str(exc),
            )
            raise
        log.info(
            "stream.client_connected",
            transport=transport.value,
            remote=request.remote,
            tenant=client.limit_key,
            role=principal.role,
            subject=principal.subject,
        )
        return client

    def release(self, client: Client, remote: str) -> None:
        self.hub.unregister(client)
        log.info(
            "stream.client_disconnected",
            transport=client.transport.value,
            remote=remote,
            tenant=client.limit_key,
            dropped=client.queue.dropped_total,
            too_slow=client.queue.kicked,
        )

    async def status_endpoint(self, request: Request, responder: Responder) -> None:
        await responder.send(
            200, msgspec.json.encode(self.status()), headers=self.cors_headers(request)
        )


async def run_stream(
    config: Config,
    *,
    auth: Authenticator | None = None,
    extra_routes: Mapping[str, HttpHandler] | None = None,
    task_status: trio.TaskStatus[StreamService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the stream until cancelled; ``task_status.started(service)`` once
    listening.  A listen address that cannot be bound raises
    :class:`bridge.io.http.ListenError` (its message names the address), bad
    auth settings :class:`bridge.auth.AuthConfigError`, both before starting.
    On cancellation WebSocket clients are closed with 1001 (going away).
    """
    listeners = await open_listeners(config.listen)
    try:
        service = StreamService(config, bound_addresses(listeners), auth)
    except BaseException:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
        raise
    router = service.router
    router.add_websocket(WEBSOCKET_PATH, partial(websocket_session, service))
    router.add(SSE_PATH, partial(sse_session, service))
    router.add(STATUS_PATH, service.status_endpoint)
    router.preflight = service.preflight
    for path, handler in (extra_routes or {}).items():
        router.add(path, handler)
    async with trio.open_nursery() as nursery:
        if service.source is not None:
            nursery.start_soon(service.source.run)
        await nursery.start(HttpServer(router).serve, listeners)
        log.info(
            "stream.listening",
            addresses=[f"{host}:{port}" for host, port in service.addresses],
            topics=config.stream.topics,
            source=config.stream.source,
        )
        task_status.started(service)
