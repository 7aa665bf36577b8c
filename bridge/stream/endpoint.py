"""One endpoint declared in ``[[streams]]``: its own contract (identity
mapping, filters, live actions, welcome, envelope, keepalive, limits,
refusal codes) on the transports, pump and replay the built-in endpoints use.

The pure rules live in ``bridge.core`` (claims, stream_filters,
stream_envelope, stream_read); this class only wires them to a hub and the
service's keys, origins and Kafka settings.  Endpoints whose sources are the
same share one Kafka consumer (the service builds them), each with its own
hub, so every endpoint keeps its own per-tenant limit and stream position.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import msgspec
import structlog

from bridge.auth import Refusal, Refused, find_token
from bridge.core.claims import Identity, NotAllowed, identify
from bridge.core.events import (
    FilterError,
    Filters,
    TenantForbidden,
    connected_message,
    error_message,
    kafka_event_id,
)
from bridge.core.settings import StreamKeepalive, StreamSettings
from bridge.core.stream_envelope import render_event, render_status, render_welcome
from bridge.core.stream_filters import query_filters
from bridge.core.stream_plan import EndpointPlan
from bridge.io.http import Request, Responder
from bridge.stream.consumer import KafkaSource, KafkaState
from bridge.stream.gate import admitted, released
from bridge.stream.hub import Client, EndpointHub, TooManyConnections, Transport

if TYPE_CHECKING:
    import trio

    from bridge.core.settings import KafkaSettings
    from bridge.stream.service import EndpointStatus, StreamService

log = structlog.get_logger(__name__)


class Endpoint:
    """A ``[[streams]]`` endpoint, served by the stream service's router."""

    def __init__(
        self,
        service: StreamService,
        plan: EndpointPlan,
        groups_of: Mapping[tuple[str, str], frozenset[str]],
    ) -> None:
        self.service = service
        self.plan = plan
        self.name = plan.settings.name
        self.hub = EndpointHub(
            max_per_tenant=plan.settings.max_per_tenant,
            reader=plan.reader,
            envelope=plan.envelope,
            groups_of=groups_of,
        )
        #: Set by the service: the (maybe shared) consumer feeding the hub.
        self.source: KafkaSource | None = None
        self.settings = self._settings()

    def _settings(self) -> StreamSettings:
        """The service's stream settings with this endpoint's topics, timing
        and limit (the pump and the replay read them from here)."""
        endpoint = self.plan.settings
        return msgspec.structs.replace(
            self.service.settings,
            topics=list(endpoint.source.topics),
            group_id=endpoint.source.group_id,
            ping_interval_s=endpoint.keepalive.interval_s,
            max_per_tenant=endpoint.max_per_tenant,
        )

    def reconfigure(self, plan: EndpointPlan) -> None:
        """A reload that kept the endpoint's paths and source: the new
        contract applies to the next connections and events."""
        self.plan = plan
        self.hub.reader = plan.reader
        self.hub.envelope = plan.envelope
        self.hub.max_per_tenant = plan.settings.max_per_tenant
        self.settings = self._settings()

    # ----------------------------------------------------------------- Gate
    @property
    def kafka(self) -> KafkaSettings:
        return self.service.kafka

    @property
    def replay_slots(self) -> trio.Semaphore:
        return self.service.replay_slots

    @property
    def kafka_state(self) -> KafkaState:
        return self.source.state if self.source is not None else "disabled"

    @property
    def keepalive(self) -> StreamKeepalive:
        return self.plan.settings.keepalive

    def cors_headers(self, request: Request) -> list[tuple[str, str]]:
        return self.service.cors_headers(request)

    def welcome(self, client: Client) -> bytes | None:
        settings = self.plan.settings
        if not settings.send_welcome:
            return None
        if self.plan.welcome is None:
            return connected_message(client.filters, client.role)
        return render_welcome(self.plan.welcome, client.filters, client.role)

    def apply_action(self, filters: Filters, message: str | bytes) -> tuple[Filters, bytes]:
        actions = self.plan.actions
        if actions is None:
            return filters, error_message("this endpoint takes no actions")
        return actions.apply(filters, message)

    def replay_event(
        self,
        at: tuple[str, int, int],
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        sent_at: str,
        filters: Filters,
    ) -> bytes | None:
        """A record read again for a resuming SSE client, through this
        endpoint's reader, filters and envelope."""
        try:
            item = self.plan.reader(value, headers, time.time_ns() // 1_000_000)
        except Exception:  # malformed or worse: not for anyone
            return None
        groups = self.hub.groups_of.get((item.tenant, item.device), ())
        if not filters.selects(item.tenant, item.device, item.metrics.keys(), groups):
            return None
        return render_event(self.plan.envelope, item, filters.metrics, kafka_event_id(*at), sent_at)

    def _refused(self, kind: str, refusal: Refusal, message: str) -> Refused:
        identity = self.plan.settings.identity
        codes = (getattr(identity.close_codes, kind), getattr(identity.http_statuses, kind))
        return Refused(refusal, message, codes=codes)

    def _identify(self, request: Request, subprotocols: list[str]) -> Identity:
        rules = self.plan.identity
        if self.plan.settings.auth == "none":
            return Identity("admin", rules.fixed_tenant, None)
        token = find_token(request.query, request.headers, subprotocols)
        try:
            claims = self.service.auth.claims(token)
        except Refused as exc:
            raise self._refused("token", exc.refusal, str(exc)) from None
        try:
            return identify(claims, rules)
        except NotAllowed as exc:
            raise self._refused(exc.reason, Refusal.FORBIDDEN, str(exc)) from None

    async def prepare(self, request: Request, subprotocols: list[str]) -> None:
        if self.plan.settings.auth == "jwt":
            await self.service.prepare(request, subprotocols)

    def admit(self, transport: Transport, request: Request, subprotocols: list[str]) -> Client:
        """Origin, identity, filters, the tenant's limit: the client, or
        :class:`Refused` with this endpoint's close code and status."""

        def build() -> tuple[Client, str | None]:
            self.service.check_origin(request)
            identity = self._identify(request, subprotocols)
            try:
                filters = query_filters(self.plan.query, identity, request.query)
            except TenantForbidden as exc:
                raise self._refused("tenant", Refusal.FORBIDDEN, str(exc)) from None
            except FilterError as exc:
                raise self._refused("request", Refusal.BAD_REQUEST, str(exc)) from None
            client = Client(transport, filters, identity.role, self.service.new_queue())
            if transport is Transport.SSE and self.plan.settings.sse_ids == "counter":
                client.sse_counter = 0
            try:
                self.hub.register(client)
            except TooManyConnections as exc:
                raise self._refused("limit", Refusal.TOO_MANY, str(exc)) from None
            return client, identity.subject

        return admitted(transport, request, build, endpoint=self.name)

    def release(self, client: Client, remote: str) -> None:
        released(self.hub, client, remote, endpoint=self.name)

    # ----------------------------------------------------------------- status
    def status(self) -> EndpointStatus:
        from bridge.stream.service import EndpointStatus  # the service imports this module

        per_tenant = self.hub.per_tenant()
        return EndpointStatus(
            paths=self.plan.paths,
            topics=list(self.plan.settings.source.topics),
            kafka_state=self.kafka_state,
            total_connections=sum(per_tenant.values()),
            per_tenant=per_tenant,
            max_per_tenant=self.hub.max_per_tenant,
            malformed_records=self.hub.malformed.total,
        )

    async def status_endpoint(self, request: Request, responder: Responder) -> None:
        """The endpoint's status path: its ``status`` template, or the whole
        :class:`EndpointStatus`."""
        status = self.status()
        if self.plan.status is not None:
            body = render_status(self.plan.status, msgspec.structs.asdict(status))
        else:
            body = msgspec.json.encode(status)
        await responder.send(200, body, headers=self.cors_headers(request))
