"""``/healthz`` and ``/readyz``: answers computed from a snapshot, no I/O.

Two questions, two endpoints, because they trigger different actions:

* ``/healthz`` asks whether the process answers at all.  A supervisor restarts
  the bridge when it does not, so it must not depend on a broker: restarting
  because Kafka is down would throw away the MQTT session and the spool's
  in-memory state and fix nothing.  It is always 200 while the event loop runs.
* ``/readyz`` asks whether the bridge does its job: MQTT connected (messages
  come in), somewhere to put records (Kafka, or the spool while Kafka is
  away), and records moving: a ``stalled`` reason when records have waited
  for a Kafka acknowledgement, or in the spool, longer than
  ``health.stalled_after_s`` (:mod:`bridge.console.progress`).  503 with the
  reasons otherwise, so a human or an orchestrator sees *why* without reading
  logs.  A spool the disk refuses (full, read-only,
  I/O errors) is one of those reasons while Kafka is down too
  (``spool: unavailable: <reason>``); while Kafka takes records the bridge
  still does its job, so the same line comes as a ``warnings`` entry of a 200
  answer (a 503 would make an orchestrator take the dashboards' stream away
  for a full disk).

Kafka's state is the producer's own view (``connecting``, ``up``, ``down``).
``connecting`` counts as able to take records: librdkafka queues them, and it
reports an unreachable cluster within milliseconds (``_ALL_BROKERS_DOWN``), at
which point the state is ``down``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from bridge.core.settings import SpoolSettings

JSON = "application/json"

SpoolState = Literal["off", "accepting", "full", "unavailable"]


@dataclass(frozen=True)
class HealthState:
    """What readiness depends on, as the daemon sees it at request time.

    ``started``: every part of the daemon has started; ``stopping``: a
    shutdown is draining (readiness goes away first, so nothing new is sent
    our way while we finish).  ``stalled``: the progress reasons, each
    starting with ``stalled:``.
    """

    started: bool
    stopping: bool
    mqtt_connected: bool
    kafka_state: str
    spool: SpoolState
    spool_reason: str | None = None
    """Why the spool is ``unavailable`` (``No space left on device (ENOSPC)``)."""
    stalled: tuple[str, ...] = ()


@dataclass(frozen=True)
class Response:
    """An HTTP answer for the server to send as is."""

    status: int
    body: bytes
    content_type: str = JSON


def spool_state(
    settings: SpoolSettings, spool_bytes: int | None, unavailable: str | None = None
) -> SpoolState:
    """Whether the spool can take records.  ``spool_bytes`` None: no spool is
    open.  ``unavailable``: why the file system refuses it (full, read-only, I/O
    errors), or why it could not be opened.  Under ``drop_oldest`` it can
    otherwise always take records (it makes room); under ``backpressure`` not
    once it holds ``max_bytes``."""
    if not settings.enabled:
        return "off"
    if unavailable is not None:
        return "unavailable"
    if spool_bytes is None:
        return "off"
    if settings.when_full == "drop_oldest" or spool_bytes < settings.max_bytes:
        return "accepting"
    return "full"


def not_ready_reasons(state: HealthState) -> list[str]:
    """Every reason the bridge is not ready, empty when it is."""
    reasons: list[str] = []
    if state.stopping:
        reasons.append("stopping: draining for shutdown")
    elif not state.started:
        reasons.append("starting: not every part is running yet")
    if not state.mqtt_connected:
        reasons.append("mqtt: not connected to the broker")
    if state.kafka_state == "down":
        if state.spool == "off":
            reasons.append("kafka: unreachable, and no spool to hold records")
        elif state.spool == "full":
            reasons.append("kafka: unreachable, and the spool is full")
        elif state.spool == "unavailable":
            reasons.append("kafka: unreachable, and the spool cannot hold records")
            reasons.append(spool_unavailable(state))
    reasons.extend(state.stalled)
    return reasons


def warnings(state: HealthState) -> list[str]:
    """What is wrong without making the bridge unready: a spool the disk
    refuses while Kafka takes records (ingest goes on; what is missing is the
    protection against the next Kafka outage)."""
    if state.spool == "unavailable" and state.kafka_state != "down":
        return [spool_unavailable(state)]
    return []


def spool_unavailable(state: HealthState) -> str:
    return f"spool: unavailable: {state.spool_reason or 'unknown reason'}"


def _json(status: int, body: dict[str, object]) -> Response:
    return Response(status, msgspec.json.encode(body))


def liveness() -> Response:
    """``/healthz``: the process answers."""
    return _json(200, {"status": "ok"})


def readiness(state: HealthState) -> Response:
    """``/readyz``: 200 when ready, else 503 with ``reasons``; both bodies say
    what each part looks like."""
    parts: dict[str, object] = {
        "mqtt": "connected" if state.mqtt_connected else "disconnected",
        "kafka": state.kafka_state,
        "spool": state.spool,
    }
    if warned := warnings(state):
        parts["warnings"] = warned
    reasons = not_ready_reasons(state)
    if reasons:
        return _json(503, {"status": "not_ready", "reasons": reasons, **parts})
    return _json(200, {"status": "ready", **parts})
