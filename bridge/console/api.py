"""The console's JSON endpoints, on the listen address beside the stream:

| path | who | what |
|---|---|---|
| ``GET /api/console/health`` | anyone (as ``/readyz``) | states, spool, rates, progress ages |
| ``GET /api/console/mappings`` | any valid token | the loaded mappings, device groups |
| ``POST /api/console/try?topic=T`` | admin token | the records a payload (the body) becomes |

Tokens come as ``Authorization: Bearer``, the way the page sends them; the
answers are plain JSON so a script gets what the page shows.  "Try a payload"
runs :func:`bridge.core.trial.try_message`, the code of ``edge-bridge
try-mapping``: nothing is produced and the daemon's state is not touched.
Every refused try is counted by reason (``edge_bridge_console_try_refused_total``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from bridge.auth import Authenticator, Principal, Refused, find_token
from bridge.console import assets
from bridge.console.deadletters import PATH as DEAD_LETTERS_PATH
from bridge.console.deadletters import DeadLetterFeed, dead_letter_session
from bridge.console.progress import ProgressTracker
from bridge.core.plan import Plan
from bridge.core.settings import Config
from bridge.core.trial import try_message
from bridge.io.http import Request, Responder, Router
from bridge.ops import health

HEALTH_PATH = "/api/console/health"
MAPPINGS_PATH = "/api/console/mappings"
TRY_PATH = "/api/console/try"
MAX_TOPIC_CHARS = 1024


@dataclass(frozen=True)
class HealthInputs:
    """What the daemon sees at request time, besides the progress tracker."""

    state: health.HealthState
    in_flight_messages: int
    spool_records: int | None
    spool_bytes: int | None
    stream_connections: int
    stream_source: str
    stream_kafka: str
    dead_letter_kafka: str


@dataclass(frozen=True)
class ConsoleSources:
    """Callables the daemon fills in; each reads the running parts as they are now."""

    config: Callable[[], Config]
    plan: Callable[[], Plan]
    auth: Callable[[], Authenticator]
    origin_allowed: Callable[[Request], bool]
    inputs: Callable[[], Awaitable[HealthInputs]]
    clock: Callable[[], float]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def mapping_rows(plan: Plan) -> list[dict[str, object]]:
    """The loaded mappings as the console lists them."""
    return [
        {
            "name": m.name,
            "mqtt_filter": m.subscription,
            "qos": m.qos,
            "kafka": {
                "clean": m.clean_topic,
                "raw": m.raw_topic,
                "dead_letter": m.dead_letter_topic,
            },
            "key": m.key.text,
        }
        for m in plan.mappings
    ]


def device_groups(plan: Plan, tenant: str | None) -> dict[str, dict[str, list[str]]]:
    """Tenant -> group -> its devices, from the device registry; only
    ``tenant``'s when given (a client token)."""
    out: dict[str, dict[str, list[str]]] = {}
    for owner, devices in sorted(plan.registry.items()):
        if tenant is not None and owner != tenant:
            continue
        for device, spec in sorted(devices.items()):
            for group in spec.groups:
                out.setdefault(owner, {}).setdefault(group, []).append(device)
    return {owner: dict(sorted(groups.items())) for owner, groups in out.items()}


class Console:
    """The console's routes and what they count."""

    def __init__(
        self, sources: ConsoleSources, tracker: ProgressTracker, feed: DeadLetterFeed
    ) -> None:
        self.sources = sources
        self.tracker = tracker
        self.feed = feed
        self.try_refused: Counter[str] = Counter()
        self.assets = assets.load()

    def mount(self, router: Router) -> None:
        assets.mount(router, self.assets)
        router.add(HEALTH_PATH, self.health)
        router.add(MAPPINGS_PATH, self.mappings)
        router.add(TRY_PATH, self.try_payload, methods=("POST",))
        router.add_websocket(
            DEAD_LETTERS_PATH,
            lambda request, ws: dead_letter_session(
                self.feed, self.sources.auth, self.sources.origin_allowed, request, ws
            ),
        )

    # ----------------------------------------------------------------- endpoints
    async def health(self, _request: Request, responder: Responder) -> None:
        inputs = await self.sources.inputs()
        now = self.sources.clock()
        tracker = self.tracker
        rates = tracker.rates()
        ready = health.not_ready_reasons(inputs.state)
        body = {
            "status": "not_ready" if ready else "ready",
            "reasons": ready,
            "mqtt": "connected" if inputs.state.mqtt_connected else "disconnected",
            "kafka": inputs.state.kafka_state,
            "in_flight_messages": inputs.in_flight_messages,
            "kafka_ack_wait_s": _rounded(tracker.ack_wait_s(now)),
            "spool": {
                "state": inputs.state.spool,
                "records": inputs.spool_records,
                "bytes": inputs.spool_bytes,
                "oldest_record_age_s": _rounded(tracker.oldest_spooled_s(now)),
            },
            "rates": {
                "messages_in_per_s": round(rates.messages_in, 2),
                "records_out_per_s": round(rates.records_out, 2),
                "dead_letters_per_s": round(rates.dead_letters, 2),
            },
            "stream": {
                "connections": inputs.stream_connections,
                "source": inputs.stream_source,
                "kafka": inputs.stream_kafka,
            },
            "dead_letters": {
                "kafka": inputs.dead_letter_kafka,
                "seen": self.feed.seen_total,
                "watchers": len(self.feed.watchers),
            },
            "stalled_after_s": self.sources.config().health.stalled_after_s,
        }
        await responder.send(200, msgspec.json.encode(body), headers=assets.SECURITY_HEADERS)

    def _principal(self, request: Request) -> Principal:
        try:
            return self.sources.auth().verify(find_token({}, request.headers, []))
        except Refused as exc:
            raise RequestRefused(
                exc.refusal.http_status, exc.refusal.name.lower(), str(exc)
            ) from None

    async def mappings(self, request: Request, responder: Responder) -> None:
        try:
            principal = self._principal(request)
        except RequestRefused as exc:
            await _refuse(responder, exc)
            return
        plan = self.sources.plan()
        tenant = None if principal.is_admin else principal.tenant
        body = {"mappings": mapping_rows(plan), "groups": device_groups(plan, tenant)}
        await responder.send(200, msgspec.json.encode(body), headers=assets.SECURITY_HEADERS)

    async def try_payload(self, request: Request, responder: Responder) -> None:
        try:
            topic = self._check_try(request)
        except RequestRefused as exc:
            self.try_refused[exc.reason] += 1
            await _refuse(responder, exc)
            return
        trial = try_message(self.sources.plan(), topic, request.body, time.time_ns() // 1_000_000)
        await responder.send(200, msgspec.json.encode(trial), headers=assets.SECURITY_HEADERS)

    def _check_try(self, request: Request) -> str:
        """The topic of an admissible try, or :class:`RequestRefused` saying why not."""
        principal = self._principal(request)
        if not principal.is_admin:
            raise RequestRefused(403, "forbidden", "trying a payload needs an admin token")
        limit = self.sources.config().limits.max_payload_bytes
        if len(request.body) > limit:
            raise RequestRefused(
                413, "too_large", f"payload is {len(request.body)} bytes, the limit is {limit}"
            )
        topics = request.query.get("topic", [])
        if len(topics) != 1 or not topics[0] or len(topics[0]) > MAX_TOPIC_CHARS:
            raise RequestRefused(
                400, "bad_request", f"give one topic of 1 to {MAX_TOPIC_CHARS} characters"
            )
        return topics[0]


class RequestRefused(Exception):
    """A refused request: HTTP status, reason (the metric's label), message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


async def _refuse(responder: Responder, exc: RequestRefused) -> None:
    body = {"error": exc.reason, "message": str(exc)}
    headers = list(assets.SECURITY_HEADERS)
    if exc.status == 401:
        headers.append(("www-authenticate", "Bearer"))
    await responder.send(exc.status, msgspec.json.encode(body), headers=headers)
