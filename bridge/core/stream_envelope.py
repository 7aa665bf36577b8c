"""What a configured stream endpoint sends: its event envelope, its welcome
message and its status body, rendered from ``[[streams]]`` templates, pure.

Why an envelope is rendered per metric filter and not per client: the
``message`` envelope carries only the metrics a client asked for, so two
clients with the same metric filter get the same bytes; the hub caches one
rendering per distinct filter (see :class:`bridge.stream.hub.Event`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from bridge.core.events import Filters, encode_event
from bridge.core.json_template import render
from bridge.core.stream_read import StreamItem

_encode = msgspec.json.Encoder().encode

#: The placeholders of each template, and what a source must give for some.
ENVELOPE_NAMES = ("tenant", "device", "metrics", "ts", "topic", "event_id", "sent_at")
WELCOME_NAMES = ("tenant", "role", "devices", "metrics", "groups", "filters")
STATUS_NAMES = (
    "total_connections",
    "max_per_tenant",
    "per_tenant",
    "kafka_state",
    "malformed_records",
)

#: The ``message`` envelope when the config gives no template: one event per
#: MQTT message with the requested metrics.
DEFAULT_MESSAGE_TEMPLATE: dict[str, object] = {
    "type": "telemetry",
    "device_id": "{device}",
    "tenant_id": "{tenant}",
    "metrics": "{metrics}",
    "timestamp": "{ts}",
    "topic": "{topic}",
}


@dataclass(frozen=True, slots=True)
class EnvelopeRules:
    """``[streams.envelope]`` compiled (the template's placeholders as slots)."""

    kind: Literal["update", "message", "passthrough"]
    template: dict[str, Any] | None


def render_event(
    rules: EnvelopeRules,
    item: StreamItem,
    wanted: frozenset[str] | None,
    event_id: str,
    sent_at: str,
) -> bytes | None:
    """The event's bytes for clients whose metric filter is ``wanted`` (None:
    every metric); None when a ``message`` event has none of them."""
    if rules.kind == "update":
        return encode_event(event_id, sent_at, item.json)
    if rules.kind == "passthrough":
        return item.json
    metrics = item.metrics
    if wanted is not None:
        metrics = {name: value for name, value in metrics.items() if name in wanted}
        if not metrics:
            return None
    values = {
        "tenant": item.tenant,
        "device": item.device,
        "metrics": metrics,
        "ts": item.ts,
        "topic": item.topic,
        "event_id": event_id,
        "sent_at": sent_at,
    }
    return _encode(render(rules.template, values))


def _listed(names: frozenset[str] | None) -> list[str]:
    return sorted(names) if names is not None else []


def render_welcome(template: Mapping[str, Any], filters: Filters, role: str) -> bytes:
    """The first message; a filter that selects everything is an empty list."""
    values = {
        "tenant": filters.tenant,
        "role": role,
        "devices": _listed(filters.devices),
        "metrics": _listed(filters.metrics),
        "groups": _listed(filters.groups),
        "filters": filters.describe(),
    }
    return _encode(render(template, values))


def render_status(template: Mapping[str, Any], values: Mapping[str, object]) -> bytes:
    """The body of an endpoint's status path."""
    return _encode(render(template, values))
