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
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial

import msgspec
import structlog
import trio

from bridge.auth import Authenticator, Refusal, Refused, find_token, keys_needed
from bridge.core.events import (
    FilterError,
    Filters,
    TenantForbidden,
    apply_action,
    connected_message,
    initial_filters,
    iso_utc,
)
from bridge.core.settings import Config, StreamKeepalive, StreamSettings
from bridge.core.stream_plan import EndpointPlan, SourceKey
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
from bridge.stream.endpoint import Endpoint
from bridge.stream.gate import admitted, released
from bridge.stream.hub import Client, ClientQueue, Hub, TooManyConnections, Transport
from bridge.stream.replay import EventOf, clean_event
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


class EndpointStatus(msgspec.Struct):
    """One ``[[streams]]`` endpoint in ``GET /api/stream/status``."""

    paths: list[str]
    topics: list[str]
    kafka_state: KafkaState
    total_connections: int
    per_tenant: dict[str, int]
    max_per_tenant: int
    malformed_records: int


class StreamStatus(msgspec.Struct, omit_defaults=True):
    """``GET /api/stream/status``, and what the metrics read; ``endpoints``
    only with ``[[streams]]`` (by name)."""

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
    endpoints: dict[str, EndpointStatus] | None = None
    #: The built-in endpoints' consumer is paused: no client is connected
    #: (bridge/stream/consumer.py); shown only then.
    kafka_paused: bool = False


def _any_watched(hubs: Sequence[Hub]) -> bool:
    """Whether a client reads any of the hubs one source feeds."""
    return any(hub.has_clients for hub in hubs)


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
        endpoints: tuple[EndpointPlan, ...] = (),
    ) -> None:
        """With ``endpoints`` (``[[streams]]``) only those are served, each fed
        by the consumer of its source; the built-in endpoints and their
        consumer are not started."""
        check_settings(config.stream)
        self.settings = config.stream
        self.kafka = config.kafka
        self.auth = auth or Authenticator(config.auth)
        self.auth.log_warnings(keys_needed=keys_needed(config))
        self.hub = Hub(
            max_per_tenant=config.stream.max_per_tenant,
            local_fallback=config.stream.source != "kafka" and not endpoints,
        )
        self.source = (
            KafkaSource(
                config.kafka, config.stream, self.hub, wanted=partial(_any_watched, [self.hub])
            )
            if config.stream.source != "local" and not endpoints
            else None
        )
        self.addresses = addresses
        self.router = Router(preflight=self.preflight)
        self.replay_slots = trio.Semaphore(max(1, config.stream.replay_concurrency))
        #: (tenant, device) -> its groups; updated in place on reload, so open
        #: connections follow the registry.
        self.groups_of: dict[tuple[str, str], frozenset[str]] = device_groups(config)
        self.endpoints = [Endpoint(self, plan, self.groups_of) for plan in endpoints]
        self.sources = [self.source] if self.source is not None else []
        self.sources += self._shared_sources(config)

    def _shared_sources(self, config: Config) -> list[KafkaSource]:
        """One consumer per distinct source (topics, group, start), feeding the
        hub of every endpoint that reads it."""
        by_key: dict[SourceKey, list[Endpoint]] = {}
        for endpoint in self.endpoints:
            by_key.setdefault(endpoint.plan.source_key, []).append(endpoint)
        sources = []
        for (topics, group_id, start), sharing in by_key.items():
            settings = msgspec.structs.replace(
                config.stream, topics=list(topics), group_id=group_id
            )
            hubs = [e.hub for e in sharing]
            source = KafkaSource(
                config.kafka,
                settings,
                hubs[0],
                shared=hubs,
                earliest=start == "earliest",
                wanted=partial(_any_watched, hubs),
            )
            for endpoint in sharing:
                endpoint.source = source
            sources.append(source)
        return sources

    def reload_endpoints(self, plans: tuple[EndpointPlan, ...]) -> None:
        """The new contracts of endpoints whose paths and source are unchanged;
        anything else (endpoints added, removed, moved, re-sourced) waits for a
        restart, as the log says."""
        now = {e.name: e for e in self.endpoints}
        same = len(plans) == len(now) and all(
            p.settings.name in now
            and now[p.settings.name].plan.paths == p.paths
            and now[p.settings.name].plan.source_key == p.source_key
            for p in plans
        )
        if not same:
            log.warning(
                "stream.endpoints_need_restart",
                hint="[[streams]] paths, sources or the set of endpoints changed: "
                "restart to serve them; the other changes are applied",
            )
            return
        for plan in plans:
            now[plan.settings.name].reconfigure(plan)

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
        auth.log_warnings(keys_needed=keys_needed(config))
        auth.adopt(self.auth)
        self.auth = auth
        self.settings = msgspec.structs.replace(
            config.stream, topics=self.settings.topics, source=self.settings.source
        )
        self.hub.max_per_tenant = config.stream.max_per_tenant
        fresh = device_groups(config)
        self.groups_of.clear()
        self.groups_of.update(fresh)

    @property
    def kafka_state(self) -> KafkaState:
        return self.source.state if self.source is not None else "disabled"

    @property
    def keepalive(self) -> StreamKeepalive:
        """The built-in endpoints: a JSON ping on WebSocket, an SSE comment."""
        return StreamKeepalive(interval_s=self.settings.ping_interval_s)

    def welcome(self, client: Client) -> bytes | None:
        return connected_message(client.filters, client.role)

    def apply_action(self, filters: Filters, message: str | bytes) -> tuple[Filters, bytes]:
        return apply_action(filters, message)

    replay_event: EventOf = staticmethod(clean_event)

    @property
    def takes_local(self) -> bool:
        """Whether :meth:`feed_local` would deliver anything now."""
        return self.hub.takes_local

    def feed_local(self, value: bytes) -> None:
        """A clean record (the exact value produced to Kafka) from this daemon's
        ingest; reaches clients only while Kafka does not feed the stream.
        Called for every clean record: it does nothing else unless it delivers
        (the time string alone cost 15% of the ingest CPU, docs/benchmarks.md)."""
        if self.hub.takes_local:
            self.hub.publish_local(value, iso_utc(time.time_ns()))

    def status(self) -> StreamStatus:
        """The built-in endpoints' status, or the sum over ``[[streams]]``."""
        hubs: list[Hub] = [e.hub for e in self.endpoints] or [self.hub]
        connections: dict[str, dict[str, int]] = {t.value: {} for t in Transport}
        per_tenant: Counter[str] = Counter()
        for hub in hubs:
            for (tenant, transport), count in hub.connections.items():
                if count:
                    kind = connections[transport.value]
                    kind[tenant] = kind.get(tenant, 0) + count
            per_tenant.update(hub.per_tenant())
        partitions = []
        fed = [(self.hub, self.source)] if not self.endpoints else []
        fed += [(e.hub, e.source) for e in self.endpoints]
        seen: set[int] = set()
        for hub, source in fed:
            if id(source) in seen:
                continue
            seen.add(id(source))
            marks = source.high_watermarks if source is not None else {}
            # A paused source is not behind: it reads nothing for want of clients.
            reading = source is not None and not source.paused
            for topic, parts in sorted(hub.positions.items()):
                for partition, position in sorted(parts.items()):
                    high = marks.get((topic, partition))
                    lag = max(0, high - position) if high is not None and reading else None
                    partitions.append(PartitionStatus(topic, partition, position, high, lag))
        return StreamStatus(
            total_connections=sum(per_tenant.values()),
            per_tenant=dict(per_tenant),
            max_per_tenant=self.hub.max_per_tenant,
            source="kafka" if self.hub.kafka_feeding or not self.hub.local_fallback else "local",
            kafka_state=self.kafka_state if not self.endpoints else self.endpoints[0].kafka_state,
            topics=list(self.settings.topics),
            connections=connections,
            events_dropped=sum(h.events_dropped for h in hubs),
            slow_disconnects=sum(h.slow_disconnects for h in hubs),
            malformed_records=sum(h.malformed.total for h in hubs),
            endpoints={e.name: e.status() for e in self.endpoints} or None,
            partitions=partitions,
            kafka_paused=self.source is not None and self.source.paused,
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

        def build() -> tuple[Client, str | None]:
            token = find_token(request.query, request.headers, subprotocols)
            self.check_origin(request)
            principal = self.auth.verify(token)
            try:
                filters = initial_filters(
                    is_admin=principal.is_admin, own_tenant=principal.tenant, query=request.query
                )
            except TenantForbidden as exc:
                raise Refused(Refusal.FORBIDDEN, str(exc)) from None
            except FilterError as exc:
                raise Refused(Refusal.BAD_REQUEST, str(exc)) from None
            client = Client(transport, filters, principal.role, self.new_queue())
            try:
                self.hub.register(client)
            except TooManyConnections as exc:
                raise Refused(Refusal.TOO_MANY, str(exc)) from None
            return client, principal.subject

        return admitted(transport, request, build)

    async def prepare(self, request: Request, subprotocols: list[str]) -> None:
        await self.auth.refresh_keys(find_token(request.query, request.headers, subprotocols))

    def check_origin(self, request: Request) -> None:
        if not self.origin_allowed(request):
            origin = request.headers.get("origin", "")[:100]
            raise Refused(Refusal.FORBIDDEN, f"origin {origin!r} is not in stream.allow_origins")

    def new_queue(self) -> ClientQueue:
        return ClientQueue(self.settings.client_queue, self.settings.max_lag_drops)

    def release(self, client: Client, remote: str) -> None:
        released(self.hub, client, remote)

    async def status_endpoint(self, request: Request, responder: Responder) -> None:
        await responder.send(
            200, msgspec.json.encode(self.status()), headers=self.cors_headers(request)
        )


async def run_stream(
    config: Config,
    *,
    auth: Authenticator | None = None,
    extra_routes: Mapping[str, HttpHandler] | None = None,
    endpoints: tuple[EndpointPlan, ...] = (),
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
        service = StreamService(config, bound_addresses(listeners), auth, endpoints)
    except BaseException:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
        raise
    router = service.router
    if not service.endpoints:
        router.add_websocket(WEBSOCKET_PATH, partial(websocket_session, service))
        router.add(SSE_PATH, partial(sse_session, service))
    for endpoint in service.endpoints:
        _mount(router, endpoint)
    router.add(STATUS_PATH, service.status_endpoint)
    for path, handler in (extra_routes or {}).items():
        router.add(path, handler)
    async with trio.open_nursery() as nursery:
        for source in service.sources:
            nursery.start_soon(source.run)
        await nursery.start(HttpServer(router).serve, listeners)
        log.info(
            "stream.listening",
            addresses=[f"{host}:{port}" for host, port in service.addresses],
            topics=config.stream.topics,
            source=config.stream.source,
        )
        task_status.started(service)


def _mount(router: Router, endpoint: Endpoint) -> None:
    """An endpoint's paths on the router; ``auth = "none"`` said in the log."""
    settings = endpoint.plan.settings
    if settings.websocket_path is not None:
        router.add_websocket(settings.websocket_path, partial(websocket_session, endpoint))
    if settings.sse_path is not None:
        router.add(settings.sse_path, partial(sse_session, endpoint))
    if settings.status_path is not None:
        router.add(settings.status_path, endpoint.status_endpoint)
    if settings.auth == "none":
        log.warning(
            "stream.auth_none",
            endpoint=settings.name,
            hint="anyone who reaches the listen address can watch this endpoint: "
            "serve it only behind an authenticating proxy",
        )


def device_groups(config: Config) -> dict[tuple[str, str], frozenset[str]]:
    """(tenant, device) -> the groups the device registry puts it in."""
    return {
        (tenant, device): frozenset(spec.groups)
        for tenant, devices in config.devices.items()
        for device, spec in devices.items()
        if spec.groups
    }
