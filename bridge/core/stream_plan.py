"""``[[streams]]`` compiled: each endpoint's reader, envelope, welcome,
status, filters, actions and identity rules, with every problem reported at
once under the path of the bad field (``streams[1].envelope.template.topic:
...``), like the mappings.

What is checked here is what the types cannot say: two endpoints on one path,
a template naming a value that does not exist or that the source cannot give
(``{topic}`` from clean records), a metric filter on a source without
metrics, a mapping reader naming no mapping, JSON rules that use MQTT topic
segments (a Kafka record has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.core.claims import IdentityRules
from bridge.core.extract import field_path
from bridge.core.json_template import compile_template, slots
from bridge.core.plan import MappingPlan, Plan, _declared, _Errors, _source_getter
from bridge.core.settings import Config, StreamEndpoint
from bridge.core.stream_envelope import (
    DEFAULT_MESSAGE_TEMPLATE,
    ENVELOPE_NAMES,
    STATUS_NAMES,
    WELCOME_NAMES,
    EnvelopeRules,
)
from bridge.core.stream_filters import ActionRules, QueryRules
from bridge.core.stream_read import JsonReader, MappingReader, Reader, read_clean
from bridge.core.timestamps import TimestampError, make_parser

#: Paths the daemon serves itself on the listen address.
RESERVED_PATHS = ("/metrics", "/healthz", "/readyz", "/api/stream/status")
#: Query parameters with a meaning of their own.
RESERVED_PARAMS = ("token", "last_event_id")

SourceKey = tuple[tuple[str, ...], str | None, str]


@dataclass(frozen=True)
class EndpointPlan:
    """One ``[[streams]]`` endpoint, ready to serve."""

    settings: StreamEndpoint
    reader: Reader
    envelope: EnvelopeRules
    welcome: dict[str, Any] | None
    status: dict[str, Any] | None
    query: QueryRules
    actions: ActionRules | None
    identity: IdentityRules

    @property
    def source_key(self) -> SourceKey:
        """Endpoints with the same key share one Kafka consumer."""
        source = self.settings.source
        return (tuple(sorted(set(source.topics))), source.group_id, source.start)

    @property
    def paths(self) -> list[str]:
        s = self.settings
        return [p for p in (s.websocket_path, s.sse_path, s.status_path) if p is not None]


def _template(
    raw: dict[str, object] | None, names: tuple[str, ...], path: str, errors: _Errors
) -> dict[str, Any] | None:
    if raw is None:
        return None
    compiled, lines = compile_template(raw, names, path)
    errors.lines.extend(lines)
    return compiled


def _json_reader(
    endpoint: StreamEndpoint, path: str, config: Config, errors: _Errors
) -> Reader | None:
    source = endpoint.source
    tenant = _source_getter(source.tenant, path + ".tenant", (), errors)
    if source.device is None:
        errors.add(path + ".device", 'read = "json" needs the device: device = { field = "..." }')
        return None
    device = _source_getter(source.device, path + ".device", (), errors)
    max_string = config.limits.max_string_length
    declared = [
        _declared(name, rule, f"{path}.fields.{name}", max_string, errors)
        for name, rule in source.fields.items()
    ]
    ts_path, ts_parser = None, None
    if source.ts is not None and source.ts.field:
        try:
            ts_parser = make_parser(source.ts.format, source.ts.tz)
            ts_path = field_path(source.ts.field)
        except TimestampError as exc:
            errors.add(path + ".ts", str(exc))
    if tenant is None or device is None or None in declared:
        return None
    return JsonReader(
        tenant,
        device,
        ts_path,
        ts_parser,
        field_path(source.metrics_object) if source.metrics_object else None,
        tuple(d for d in declared if d is not None),
        max_string,
    )


def _reader(endpoint: StreamEndpoint, path: str, plan: Plan, errors: _Errors) -> Reader | None:
    source = endpoint.source
    path += ".source"
    if not source.topics or not all(source.topics):
        errors.add(path + ".topics", "name at least one Kafka topic")
    json_only = [
        name
        for name, unset in (
            ("device", source.device is None),
            ("ts", source.ts is None),
            ("metrics_object", source.metrics_object is None),
            ("fields", not source.fields),
        )
        if not unset
    ]
    if source.read != "json" and json_only:
        errors.add(f"{path}.{json_only[0]}", 'only read = "json" takes extraction rules')
    if source.read != "mapping" and source.mapping is not None:
        errors.add(path + ".mapping", 'only read = "mapping" names a mapping')
    if source.read == "clean":
        return read_clean
    if source.read == "json":
        return _json_reader(endpoint, path, plan.config, errors)
    mapping: MappingPlan | None = next((m for m in plan.mappings if m.name == source.mapping), None)
    if mapping is None:
        known = ", ".join(m.name for m in plan.mappings)
        errors.add(path + ".mapping", f"no mapping named {source.mapping!r} (known: {known})")
        return None
    if mapping.sparkplug is not None:
        # Its DATA messages name metrics by aliases only the births explain.
        errors.add(
            path + ".mapping",
            f"{mapping.name!r} is a sparkplug_b mapping: its raw records need the alias tables"
            ' of their births; read its clean topic with read = "clean" instead',
        )
        return None
    return MappingReader(plan, mapping)


def _source_gives(endpoint: StreamEndpoint) -> set[str]:
    """The envelope values this endpoint's source can fill."""
    source = endpoint.source
    gives = {"tenant", "device", "ts", "event_id", "sent_at", "metrics"}
    if source.read == "mapping":
        gives.add("topic")
    if source.read == "json" and not source.fields and source.metrics_object is None:
        gives.discard("metrics")
    if source.read == "json" and source.ts is None:
        gives.discard("ts")
    return gives


def _envelope(endpoint: StreamEndpoint, path: str, errors: _Errors) -> EnvelopeRules:
    envelope = endpoint.envelope
    path += ".envelope"
    if envelope.kind == "update" and endpoint.source.read != "clean":
        errors.add(path + ".kind", 'the "update" envelope carries clean records: read = "clean"')
    if envelope.kind != "message":
        if envelope.template is not None:
            errors.add(path + ".template", 'only kind = "message" takes a template')
        return EnvelopeRules(envelope.kind, None)
    template = _template(
        envelope.template or DEFAULT_MESSAGE_TEMPLATE, ENVELOPE_NAMES, path + ".template", errors
    )
    missing = sorted(slots(template).intersection(ENVELOPE_NAMES) - _source_gives(endpoint))
    if missing:
        errors.add(
            path + ".template",
            f"source read = {endpoint.source.read!r} cannot give {{{missing[0]}}}",
        )
    return EnvelopeRules("message", template)


def _check_filters(endpoint: StreamEndpoint, path: str, errors: _Errors) -> None:
    filters = endpoint.filters
    seen: dict[str, str] = {}
    for kind in ("device", "metric", "group", "tenant"):
        for name in getattr(filters, kind):
            where = f"{path}.filters.{kind}"
            if not name or name in RESERVED_PARAMS:
                errors.add(where, f"{name!r} cannot be a filter parameter")
            elif name in seen:
                errors.add(where, f"parameter {name!r} is already the {seen[name]} filter")
            seen[name] = kind
    if filters.metric and "metrics" not in _source_gives(endpoint):
        errors.add(
            path + ".filters.metric",
            'the source gives no metrics (read = "json" without fields or metrics_object): '
            "set metric = []",
        )
    actions = endpoint.actions
    names = [actions.subscribe, actions.unsubscribe, actions.set_metrics, actions.clear_filters]
    if len(set(names)) != len(names) or not all(names):
        errors.add(path + ".actions", "the four action names must be distinct and not empty")


def _check_endpoint(endpoint: StreamEndpoint, path: str, errors: _Errors) -> None:
    if endpoint.websocket_path is None and endpoint.sse_path is None:
        errors.add(path, "give websocket_path, sse_path or both")
    if endpoint.status is not None and endpoint.status_path is None:
        errors.add(path + ".status", "a status body needs a status_path")
    if endpoint.max_per_tenant < 1:
        errors.add(path + ".max_per_tenant", "must be at least 1")
    keepalive = endpoint.keepalive
    if keepalive.interval_s <= 0 or (keepalive.sse_interval_s or 1) <= 0:
        errors.add(path + ".keepalive", "intervals must be positive")
    identity = endpoint.identity
    for kind in ("token", "role", "tenant", "limit", "request"):
        code = getattr(identity.close_codes, kind)
        if not (1000 <= code <= 4999):
            errors.add(f"{path}.identity.close_codes.{kind}", "a close code is 1000..4999")
        status = getattr(identity.http_statuses, kind)
        if not (400 <= status <= 599):
            errors.add(f"{path}.identity.http_statuses.{kind}", "an error status is 400..599")


def compile_streams(plan: Plan, errors: _Errors) -> tuple[EndpointPlan, ...]:
    """Every ``[[streams]]`` endpoint of ``plan.config``; problems go to ``errors``."""
    endpoints = []
    owners: dict[str, str] = {p: "the daemon" for p in RESERVED_PATHS}
    names: set[str] = set()
    for index, endpoint in enumerate(plan.config.streams):
        path = f"streams[{index}]"
        if not endpoint.name or endpoint.name in names:
            errors.add(path + ".name", f"endpoint name {endpoint.name!r} is empty or used twice")
        names.add(endpoint.name)
        for kind in ("websocket_path", "sse_path", "status_path"):
            route = getattr(endpoint, kind)
            if route is None:
                continue
            if not route.startswith("/"):
                errors.add(f"{path}.{kind}", "a path starts with /")
            elif route in owners:
                errors.add(f"{path}.{kind}", f"{route} is already served by {owners[route]}")
            owners[route] = path
        _check_endpoint(endpoint, path, errors)
        _check_filters(endpoint, path, errors)
        reader = _reader(endpoint, path, plan, errors)
        envelope = _envelope(endpoint, path, errors)
        welcome = _template(endpoint.welcome, WELCOME_NAMES, path + ".welcome", errors)
        status = _template(endpoint.status, STATUS_NAMES, path + ".status", errors)
        if reader is None:
            continue
        endpoints.append(
            EndpointPlan(
                endpoint,
                reader,
                envelope,
                welcome,
                status,
                QueryRules.from_settings(endpoint.filters),
                ActionRules(endpoint.actions) if endpoint.actions.enabled else None,
                IdentityRules.from_settings(endpoint.identity),
            )
        )
    return tuple(endpoints)
