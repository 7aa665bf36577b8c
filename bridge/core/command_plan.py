"""Kafka records to MQTT publishes (commands and configuration down to devices).

Pure: a :class:`CommandPlan` is compiled once from a ``[[commands]]`` table and
turns one Kafka record (value and headers) into the MQTT topic, payload and user
properties to publish, or a :class:`bridge.core.coerce.InputRejected` with the reason
the record goes to the dead-letter topic instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from bridge.core.coerce import InputRejected
from bridge.core.extract import MISSING, field_path, get_path
from bridge.core.json_depth import nesting_depth
from bridge.core.settings import CommandMapping
from bridge.core.topics import Template, TopicSyntaxError, segment_problem

_decode = msgspec.json.Decoder().decode

MAX_SEGMENT = 128
MAX_PROPERTY_BYTES = 4096


@dataclass(frozen=True, slots=True)
class CommandMessage:
    """What to send to the MQTT broker for one record."""

    topic: str
    payload: bytes
    user_properties: list[tuple[str, str]]


@dataclass(frozen=True)
class CommandPlan:
    """One compiled ``[[commands]]`` table."""

    mapping: CommandMapping
    topic: Template
    sources: tuple[tuple[str, str | None, tuple[str, ...] | None], ...]  # name, header, path
    payload_path: tuple[str, ...] | None
    #: limits.max_json_depth: a record nested deeper is refused before it is
    #: decoded (the decoder's recursion would otherwise end the daemon, and
    #: again at every restart, the offset never being committed).
    max_depth: int = 64

    @property
    def needs_json(self) -> bool:
        return self.payload_path is not None or any(p is not None for _, _, p in self.sources)

    def resolve(
        self, value: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> CommandMessage:
        """The publish for one record, or raise InputRejected."""
        header_map = {k: v for k, v in headers or ()}
        doc: Any = MISSING
        values: dict[str, str] = {}
        for name, header, path in self.sources:
            found: object = MISSING
            if header is not None and header in header_map:
                found = header_map[header].decode("utf-8", "replace")
            if found is MISSING and path is not None:
                if doc is MISSING:
                    doc = self._json(value)
                found = get_path(doc, path)
            if found is MISSING or found is None:
                raise InputRejected(
                    "missing_field", f"{{{name}}}: no header or field gives a value"
                )
            if isinstance(found, int | float) and not isinstance(found, bool):
                found = str(found)
            if not isinstance(found, str):
                raise InputRejected("invalid_field", f"{{{name}}}: {found!r} is not a string")
            problem = segment_problem(found, MAX_SEGMENT)
            if problem or "/" in found:
                raise InputRejected(
                    "invalid_topic", f"{{{name}}} = {found!r} {problem or 'contains /'}"
                )
            values[name] = found
        payload = value or b""
        if self.payload_path is not None:
            if doc is MISSING:
                doc = self._json(value)
            inner = get_path(doc, self.payload_path)
            if inner is MISSING:
                where = ".".join(self.payload_path)
                raise InputRejected("missing_field", f"payload field {where} is missing")
            payload = inner.encode() if isinstance(inner, str) else msgspec.json.encode(inner)
        properties: list[tuple[str, str]] = []
        if self.mapping.headers_as_user_properties:
            budget = MAX_PROPERTY_BYTES
            for name, raw in headers or ():
                text = raw.decode("utf-8", "replace") if raw is not None else ""
                budget -= len(name) + len(text)
                if budget < 0:
                    break
                properties.append((name, text))
        return CommandMessage(self.topic.render(values), payload, properties)

    def _json(self, value: bytes | None) -> Any:
        raw = value or b""
        limit = self.max_depth
        if raw.count(b"[") + raw.count(b"{") > limit and nesting_depth(raw, limit) > limit:
            raise InputRejected(
                "too_deep", f"record value nests deeper than limits.max_json_depth = {limit}"
            )
        try:
            return _decode(raw)
        except msgspec.DecodeError as exc:
            raise InputRejected("invalid_json", f"record value is not valid JSON: {exc}") from None


def compile_command(
    mapping: CommandMapping, path: str, max_depth: int = 64
) -> tuple[CommandPlan | None, list[str]]:
    """Compile one ``[[commands]]`` table; errors carry ``path``."""
    errors: list[str] = []
    try:
        topic = Template.parse(mapping.mqtt_topic)
    except TopicSyntaxError as exc:
        return None, [f"{path}.mqtt_topic: {exc}"]
    if "+" in mapping.mqtt_topic or "#" in mapping.mqtt_topic:
        errors.append(f"{path}.mqtt_topic: a topic to publish to cannot hold wildcards")
    for name in mapping.values:
        if name not in topic.names:
            errors.append(f"{path}.values.{name}: {{{name}}} is not in mqtt_topic")
    sources: list[tuple[str, str | None, tuple[str, ...] | None]] = []
    for name in topic.names:
        declared = mapping.values.get(name)
        if declared is None:
            sources.append((name, name, field_path(name)))
        elif (declared.header is None) == (declared.field is None):
            errors.append(f"{path}.values.{name}: set exactly one of header, field")
        else:
            path_keys = field_path(declared.field) if declared.field else None
            sources.append((name, declared.header, path_keys))
    if not mapping.kafka_topic:
        errors.append(f"{path}.kafka_topic: empty Kafka topic name")
    if errors:
        return None, errors
    payload_path = field_path(mapping.payload_field) if mapping.payload_field else None
    return CommandPlan(mapping, topic, tuple(sources), payload_path, max_depth), []
