"""Compile a decoded config into plans the hot path only executes.

Everything that can be decided from the config alone is decided here, once:
topic filters are parsed, templates split, field paths turned into tuples,
coercion closures built, time zones resolved.  Every problem found is reported
with the path of the bad field (``mappings/site.toml: mappings[0].kafka.key:
unknown placeholder {site}``), all of them at once, so ``check-config`` can list
them in one go.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from bridge.core.coerce import Coercer, make_coercer
from bridge.core.command_plan import CommandPlan, compile_command
from bridge.core.extract import Getter, field_path, make_getter
from bridge.core.settings import (
    Config,
    DeviceSpec,
    FieldRule,
    LoadedConfig,
    Mapping,
    MetricSpec,
    SingleRule,
    Source,
)
from bridge.core.sparkplug import NAMESPACE, SPARKPLUG_SEGMENTS
from bridge.core.timestamps import Parser, TimestampError, make_parser
from bridge.core.topics import Template, TopicFilter, TopicSyntaxError

# Placeholders every key or header template may use besides the topic's segments.
RESOLVED_NAMES = ("tenant", "device")
# And header templates only: how the MQTT message was delivered.
DELIVERY_NAMES = ("mqtt_qos", "mqtt_retain")


@dataclass(frozen=True, slots=True)
class DeclaredMetric:
    """A metric read from one payload field (the ``fields`` shape)."""

    name: str
    path: tuple[str, ...]
    coerce: Coercer
    unit: str | None
    required: bool


@dataclass(frozen=True, slots=True)
class SingleMetric:
    """One reading per message (the ``single`` shape)."""

    name: Getter
    value_path: tuple[str, ...]
    coerce: Coercer
    unit: Getter | None
    quality: Getter | None


@dataclass(frozen=True, slots=True)
class SparkplugPlan:
    """What a ``sparkplug_b`` mapping adds: where events go, and the least time
    between two rebirth requests to a node (None: never ask)."""

    events_topic: str
    rebirth_interval_ms: int | None


@dataclass(frozen=True, slots=True)
class MappingPlan:
    """One mapping, compiled."""

    name: str
    filter: TopicFilter
    qos: int
    shared_group: str | None
    clean_topic: str | None  # None: a raw-only (pass-through) mapping
    raw_topic: str | None
    dead_letter_topic: str
    key: Template
    headers: tuple[tuple[str, Template], ...]
    tenant: Getter
    device: Getter
    device_field: tuple[str, ...] | None
    schema_version_field: tuple[str, ...] | None
    schema_versions: frozenset[int]
    ts_field: tuple[str, ...] | None
    ts_parser: Parser
    ts_required: bool
    event_id: Getter | None
    quality: Getter | None
    metrics_object: tuple[str, ...] | None
    declared: tuple[DeclaredMetric, ...]
    single: SingleMetric | None
    dedup_window_ms: int | None
    dedup_max_entries: int
    sparkplug: SparkplugPlan | None = None

    @property
    def subscription(self) -> str:
        """The MQTT subscription, as a shared subscription when a group is set."""
        if self.shared_group:
            return f"$share/{self.shared_group}/{self.filter.subscription}"
        return self.filter.subscription


@dataclass(frozen=True)
class Plan:
    """The whole compiled config: mappings in match order, catalog and registry."""

    config: Config
    mappings: tuple[MappingPlan, ...]
    catalog: dict[str, MetricSpec]
    registry: dict[str, dict[str, DeviceSpec]]
    allowed_metrics: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    commands: tuple[CommandPlan, ...] = ()
    #: ``[[streams]]`` endpoints (bridge.core.stream_plan.EndpointPlan).
    streams: tuple[Any, ...] = ()
    # The registry read the other way: device -> the tenants it is registered
    # for, to tell a device of another tenant from an unknown one.
    device_tenants: dict[str, tuple[str, ...]] = field(default_factory=dict)


class PlanError(Exception):
    """The config decoded but cannot be used; ``errors`` has one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class _Errors:
    """Collects problems instead of stopping at the first; ``prefix`` (the file,
    ``"edge-bridge.toml: "``) starts every line."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.lines.append(f"{self.prefix}{path}: {message}")


def _source_getter(
    source: Source, path: str, segments: tuple[str, ...], errors: _Errors
) -> Getter | None:
    chosen = [s for s in (source.segment, source.field, source.const) if s is not None]
    if len(chosen) != 1:
        errors.add(path, "set exactly one of segment, field, const")
        return None
    if source.segment is not None and source.segment not in segments:
        errors.add(
            path + ".segment",
            f"segment {{{source.segment}}} is not in the topic filter "
            f"(it has: {', '.join(segments) or 'none'})",
        )
        return None
    if source.field == "":
        errors.add(path + ".field", "empty field path")
        return None
    return make_getter(source)


def _template(text: str, path: str, allowed: tuple[str, ...], errors: _Errors) -> Template | None:
    try:
        template = Template.parse(text)
    except TopicSyntaxError as exc:
        errors.add(path, str(exc))
        return None
    for name in template.names:
        if name not in allowed:
            errors.add(path, f"unknown placeholder {{{name}}} (known: {', '.join(allowed)})")
            return None
    return template


def _declared(
    name: str, rule: FieldRule, path: str, max_string: int, errors: _Errors
) -> DeclaredMetric | None:
    if not rule.field:
        errors.add(path + ".field", "empty field path")
        return None
    if rule.enum is not None and rule.type != "str":
        errors.add(path + ".enum", 'enum only applies to type = "str"')
        return None
    coerce = make_coercer(
        rule.type,
        rule.field,
        max_string=max_string,
        true_words=rule.true,
        false_words=rule.false,
        enum=rule.enum,
    )
    return DeclaredMetric(name, field_path(rule.field), coerce, rule.unit, rule.required)


def _single(
    rule: SingleRule, path: str, segments: tuple[str, ...], max_string: int, errors: _Errors
) -> SingleMetric | None:
    name = _source_getter(rule.name, path + ".name", segments, errors)
    unit = _source_getter(rule.unit, path + ".unit", segments, errors) if rule.unit else None
    quality = (
        _source_getter(rule.quality, path + ".quality", segments, errors) if rule.quality else None
    )
    if not rule.value:
        errors.add(path + ".value", "empty field path")
        return None
    if name is None or (rule.unit and unit is None) or (rule.quality and quality is None):
        return None
    coerce = make_coercer(rule.type, rule.value, max_string=max_string)
    return SingleMetric(name, field_path(rule.value), coerce, unit, quality)


def compile_mapping(
    mapping: Mapping, path: str, config: Config
) -> tuple[MappingPlan | None, list[str]]:
    """Compile one mapping; returns the plan (None when invalid) and its errors."""
    errors = _Errors()
    max_string = config.limits.max_string_length
    try:
        topic_filter = TopicFilter.parse(mapping.mqtt.topic)
    except TopicSyntaxError as exc:
        errors.add(path + ".mqtt.topic", str(exc))
        return None, errors.lines
    segments = topic_filter.names
    sparkplug = None
    if mapping.payload.format == "sparkplug_b":
        sparkplug = _sparkplug(mapping, topic_filter, path, errors)
        segments = tuple(dict.fromkeys((*segments, *SPARKPLUG_SEGMENTS)))
    if mapping.mqtt.shared_group is not None and not mapping.mqtt.shared_group.isidentifier():
        errors.add(path + ".mqtt.shared_group", "use letters, digits and underscores only")
    allowed = tuple(dict.fromkeys((*RESOLVED_NAMES, *segments)))
    key = _template(mapping.kafka.key, path + ".kafka.key", allowed, errors)
    headers = []
    for header, text in mapping.kafka.headers.items():
        where = f"{path}.kafka.headers.{header}"
        template = _template(text, where, (*allowed, *DELIVERY_NAMES), errors)
        if template is not None:
            headers.append((header, template))
    for topic_field in ("clean_topic", "raw_topic", "dead_letter_topic"):
        if not getattr(mapping.kafka, topic_field):
            errors.add(f"{path}.kafka.{topic_field}", "empty Kafka topic name")
    rules = mapping.payload
    tenant = _source_getter(rules.tenant, path + ".payload.tenant", segments, errors)
    device = _source_getter(rules.device, path + ".payload.device", segments, errors)
    event_id = (
        _source_getter(rules.event_id, path + ".payload.event_id", segments, errors)
        if rules.event_id
        else None
    )
    quality = (
        _source_getter(rules.quality, path + ".payload.quality", segments, errors)
        if rules.quality
        else None
    )
    try:
        ts_parser = make_parser(rules.ts.format, rules.ts.tz)
    except TimestampError as exc:
        errors.add(path + ".payload.ts", str(exc))
        ts_parser = make_parser("auto", "UTC")
    shapes = [s for s in (rules.metrics_object is not None, bool(rules.fields), rules.single) if s]
    if len(shapes) > 1:
        errors.add(path + ".payload", "set only one of metrics_object, fields, single")
    declared = []
    for name, rule in rules.fields.items():
        compiled = _declared(name, rule, f"{path}.payload.fields.{name}", max_string, errors)
        if compiled is not None:
            declared.append(compiled)
    single = (
        _single(rules.single, path + ".payload.single", segments, max_string, errors)
        if rules.single
        else None
    )
    metrics_object = rules.metrics_object
    if metrics_object is None and not rules.fields and rules.single is None:
        metrics_object = "metrics"
    if rules.ts.required and not rules.ts.field:
        errors.add(path + ".payload.ts.required", "a required time needs a field")
    if mapping.dedup is not None:
        _check_dedup(mapping, path, errors)
    if not mapping.kafka.clean_enabled:
        _check_raw_only(mapping, path, errors)
    if errors.lines or key is None or tenant is None or device is None:
        return None, errors.lines
    plan = MappingPlan(
        name=mapping.name,
        filter=topic_filter,
        qos=mapping.mqtt.qos,
        shared_group=mapping.mqtt.shared_group,
        clean_topic=mapping.kafka.clean_topic if mapping.kafka.clean_enabled else None,
        raw_topic=mapping.kafka.raw_topic if mapping.kafka.raw_enabled else None,
        dead_letter_topic=mapping.kafka.dead_letter_topic,
        key=key,
        headers=tuple(headers),
        tenant=tenant,
        device=device,
        device_field=field_path(rules.device_field) if rules.device_field else None,
        schema_version_field=(
            field_path(rules.schema_version_field) if rules.schema_version_field else None
        ),
        schema_versions=frozenset(rules.schema_versions),
        ts_field=field_path(rules.ts.field) if rules.ts.field else None,
        ts_parser=ts_parser,
        ts_required=rules.ts.required,
        event_id=event_id,
        quality=quality,
        metrics_object=field_path(metrics_object) if metrics_object else None,
        declared=tuple(declared),
        single=single,
        dedup_window_ms=int(mapping.dedup.window_s * 1000) if mapping.dedup else None,
        dedup_max_entries=mapping.dedup.max_entries if mapping.dedup else 0,
        sparkplug=sparkplug,
    )
    return plan, []


def _sparkplug(
    mapping: Mapping, topic_filter: TopicFilter, path: str, errors: _Errors
) -> SparkplugPlan:
    """Check what a Sparkplug mapping cannot have, and compile what it adds."""
    rules = mapping.payload
    if topic_filter.levels[0] != NAMESPACE:
        errors.add(path + ".mqtt.topic", f"a sparkplug_b mapping's filter starts with {NAMESPACE}/")
    if rules.metrics_object is not None or rules.fields or rules.single is not None:
        errors.add(
            path + ".payload",
            "a sparkplug_b payload names its own metrics: remove metrics_object, fields, single",
        )
    if mapping.dedup is not None:
        errors.add(path + ".dedup", "Sparkplug B messages carry no event id to deduplicate by")
    settings = mapping.sparkplug
    if not settings.events_topic:
        errors.add(path + ".sparkplug.events_topic", "empty Kafka topic name")
    if settings.rebirth_interval_s <= 0:
        errors.add(path + ".sparkplug.rebirth_interval_s", "must be positive")
    interval = int(settings.rebirth_interval_s * 1000) if settings.rebirth else None
    return SparkplugPlan(settings.events_topic, interval)


def _check_raw_only(mapping: Mapping, path: str, errors: _Errors) -> None:
    """A raw-only mapping never reads its payload (that is its point: moving a
    message costs no judging), so nothing it needs may come from there."""
    where = path + ".kafka.clean_enabled"
    if not mapping.kafka.raw_enabled:
        errors.add(where, "with raw_enabled false too the mapping would write nothing")
    if mapping.payload.format != "json":
        # Sparkplug's births and sequence numbers are tracked by reading each
        # payload; a pass-through of its bytes is a json mapping on spBv1.0/...
        errors.add(
            where,
            "a sparkplug_b mapping reads every payload; to pass Sparkplug bytes through "
            'unread, use format = "json" with the topic segments as tenant and device',
        )
    for name in ("tenant", "device"):
        if getattr(mapping.payload, name).field is not None:
            errors.add(
                f"{path}.payload.{name}",
                "a raw-only mapping (kafka.clean_enabled = false) does not read the payload: "
                "take it from a topic segment or a constant",
            )
    if mapping.dedup is not None:
        errors.add(path + ".dedup", "a raw-only mapping does not read the payload's event id")


def _check_dedup(mapping: Mapping, path: str, errors: _Errors) -> None:
    assert mapping.dedup is not None
    if mapping.payload.event_id is None:
        errors.add(path + ".dedup", "dedup needs payload.event_id to say where the id is")
    if mapping.dedup.window_s <= 0:
        errors.add(path + ".dedup.window_s", "must be positive")
    if mapping.dedup.max_entries < 1:
        errors.add(path + ".dedup.max_entries", "must be at least 1")


def _check_catalog(config: Config, errors: _Errors) -> None:
    for name, spec in config.metrics.items():
        where = f"metrics.{name}"
        if spec.min is not None and spec.max is not None and spec.min > spec.max:
            errors.add(where, f"min {spec.min} is greater than max {spec.max}")
        if (spec.min is not None or spec.max is not None) and spec.type != "numeric":
            errors.add(where, "min and max only apply to numeric metrics")
        for index, alarm in enumerate(spec.alarms):
            at = f"{where}.alarms[{index}]"
            if spec.type != "numeric":
                errors.add(at, "alarms only apply to numeric metrics")
            if alarm.kind == "outside":
                if alarm.low is None or alarm.high is None or alarm.low > alarm.high:
                    errors.add(at, "kind outside needs low <= high")
            elif alarm.threshold is None:
                errors.add(at, f"kind {alarm.kind} needs threshold")
            if alarm.for_s < 0:
                errors.add(at + ".for_s", "must not be negative")


# Room a record needs in a spool segment beyond its payload: topic, key, headers
# and framing.  Generous on purpose: the check is about orders of magnitude.
SPOOL_RECORD_ROOM = 16_384


def _check_spool(config: Config, errors: _Errors) -> None:
    """Spool sizes that would fail only during an outage, found at load time."""
    spool = config.spool
    largest = config.limits.max_payload_bytes + SPOOL_RECORD_ROOM
    if spool.segment_bytes < largest:
        errors.add(
            "spool.segment_bytes",
            f"{spool.segment_bytes} is too small for a record of limits.max_payload_bytes "
            f"({config.limits.max_payload_bytes}) plus headers: use at least {largest}",
        )
    if spool.max_bytes < 2 * spool.segment_bytes:
        errors.add("spool.max_bytes", "must be at least twice spool.segment_bytes")
    if spool.fsync_interval_ms < 0:
        errors.add("spool.fsync_interval_ms", "must not be negative")


# Deeper than this, decoding itself would come near Python's recursion limit.
MAX_JSON_DEPTH = 512


def _check_limits(config: Config, errors: _Errors) -> None:
    limits = config.limits
    if not 1 <= limits.max_json_depth <= MAX_JSON_DEPTH:
        errors.add("limits.max_json_depth", f"must be between 1 and {MAX_JSON_DEPTH}")
    if limits.max_alarm_series < 1:
        errors.add("limits.max_alarm_series", "must be at least 1")
    try:
        re.compile(limits.identifier_pattern)
    except re.error as exc:
        errors.add("limits.identifier_pattern", f"not a regular expression: {exc}")


def _device_tenants(config: Config) -> dict[str, tuple[str, ...]]:
    owners: dict[str, list[str]] = {}
    for tenant, devices in config.devices.items():
        for device in devices:
            owners.setdefault(device, []).append(tenant)
    return {device: tuple(tenants) for device, tenants in owners.items()}


def _check_mqtt(config: Config, errors: _Errors) -> None:
    mqtt = config.mqtt
    if mqtt.reconnect_max_s < mqtt.reconnect_min_s:
        errors.add(
            "mqtt.reconnect_max_s",
            f"{mqtt.reconnect_max_s} is less than mqtt.reconnect_min_s ({mqtt.reconnect_min_s})",
        )


def compile_config(loaded: LoadedConfig) -> Plan:
    """Compile every mapping and check the catalog; raise PlanError listing all
    problems when anything is wrong."""
    config = loaded.config
    errors = _Errors()
    # Problems in the main file's own tables (catalog, registry, spool ...).
    top = _Errors(f"{loaded.main}: ")
    plans = []
    names: set[str] = set()
    for index, mapping in enumerate(config.mappings):
        path = loaded.mapping_path(index)
        if mapping.name in names:
            errors.add(path + ".name", f"mapping name {mapping.name!r} is used twice")
        names.add(mapping.name)
        plan, lines = compile_mapping(mapping, path, config)
        errors.lines.extend(lines)
        if plan is not None:
            plans.append(plan)
    _check_catalog(config, top)
    _check_spool(config, top)
    _check_limits(config, top)
    _check_mqtt(config, top)
    commands = []
    for index, command in enumerate(config.commands):
        compiled, lines = compile_command(
            command, f"commands[{index}]", config.limits.max_json_depth
        )
        top.lines.extend(top.prefix + line for line in lines)
        if compiled is not None:
            commands.append(compiled)
    allowed: dict[tuple[str, str], frozenset[str]] = {}
    for tenant, devices in config.devices.items():
        for device, spec in devices.items():
            if spec.metrics is not None:
                allowed[(tenant, device)] = frozenset(spec.metrics)
                for metric in spec.metrics:
                    if config.metrics and metric not in config.metrics:
                        top.add(
                            f"devices.{tenant}.{device}.metrics",
                            f"metric {metric!r} is not in the metric catalog",
                        )
    whole = Plan(
        config,
        tuple(plans),
        dict(config.metrics),
        dict(config.devices),
        allowed,
        tuple(commands),
        device_tenants=_device_tenants(config),
    )
    if config.streams:
        from bridge.core.stream_plan import compile_streams  # it builds on this module

        whole = replace(whole, streams=compile_streams(whole, errors))
    if errors.lines or top.lines:
        raise PlanError(errors.lines + top.lines)
    return whole
