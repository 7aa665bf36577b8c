"""How a stream endpoint reads a Kafka record (``[streams.source] read``),
pure: bytes, headers and the current time in, a :class:`StreamItem` out.

Three readers, one result shape, so filters and envelopes do not care where
an event came from:

* ``clean``: the bridge's own clean record (one metric);
* ``mapping``: a raw-topic record, i.e. one MQTT message (the value is its
  payload, the ``mqtt_topic`` header its topic), run again through the named
  ingest mapping, so the event carries every valid metric of the message;
* ``json``: any JSON record, with the ingest side's own extraction and
  coercion rules (``Source`` getters, time formats, declared fields).

A record that cannot be read raises :class:`MalformedRecord`; the caller
counts it and skips it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from bridge.core.coerce import InputRejected, typed_value
from bridge.core.events import MalformedRecord, compact_json, decode_clean
from bridge.core.extract import MISSING, Getter, get_path
from bridge.core.normalize import Normalizer, Now
from bridge.core.plan import DeclaredMetric, MappingPlan, Plan
from bridge.core.records import CleanRecord, Value
from bridge.core.timestamps import Parser, TimestampError, format_ms

Headers = list[tuple[str, bytes]] | None


@dataclass(frozen=True, slots=True)
class StreamItem:
    """What one Kafka record gives a stream endpoint."""

    tenant: str
    device: str
    #: metric name -> value; empty when the source declares no metrics.
    metrics: dict[str, Value]
    ts: str | None
    #: The MQTT topic of the message, when the source knows it.
    topic: str | None
    #: The record's JSON without line breaks (the clean record, the payload).
    json: bytes


Reader = Callable[[bytes | None, Headers, int], StreamItem]

_clean_decoder = msgspec.json.Decoder(CleanRecord)
_decode = msgspec.json.Decoder().decode


def read_clean(value: bytes | None, _headers: Headers = None, _now_ms: int = 0) -> StreamItem:
    """A clean record; the value's bytes are kept (fields a newer ingest adds pass)."""
    record = decode_clean(value)
    assert value is not None
    return StreamItem(
        record.tenant,
        record.device_serial_id,
        {record.metric: record.value},
        record.ts,
        None,
        compact_json(value),
    )


def _object(value: bytes | None) -> dict[str, Any]:
    if not value:
        raise MalformedRecord("empty value")
    try:
        doc = _decode(value)
    except msgspec.DecodeError as exc:
        raise MalformedRecord(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedRecord("not a JSON object")
    return doc


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedRecord(f"no {what}")
    return value


@dataclass(frozen=True, slots=True)
class JsonReader:
    """Any JSON record, read with the ingest's rules (compiled by the stream plan)."""

    tenant: Getter
    device: Getter
    ts_path: tuple[str, ...] | None
    ts_parser: Parser | None
    metrics_object: tuple[str, ...] | None
    declared: tuple[DeclaredMetric, ...]
    max_string: int

    def __call__(self, value: bytes | None, _headers: Headers = None, _now: int = 0) -> StreamItem:
        doc = _object(value)
        assert value is not None
        tenant = _text(self.tenant({}, doc), "tenant")
        device = _text(self.device({}, doc), "device")
        return StreamItem(
            tenant, device, self._metrics(doc), self._ts(doc), None, compact_json(value)
        )

    def _ts(self, doc: dict[str, Any]) -> str | None:
        if self.ts_path is None or self.ts_parser is None:
            return None
        raw = get_path(doc, self.ts_path)
        if raw is MISSING or raw is None:
            return None
        try:
            return format_ms(self.ts_parser(raw))
        except TimestampError:
            return None

    def _metrics(self, doc: dict[str, Any]) -> dict[str, Value]:
        """Every metric that reads and coerces; one that does not is left out."""
        metrics: dict[str, Value] = {}
        if self.metrics_object is not None:
            found = get_path(doc, self.metrics_object)
            for name, raw in found.items() if isinstance(found, dict) else ():
                try:
                    metrics[name] = typed_value(raw, self.max_string)[0]
                except InputRejected:
                    continue
        for metric in self.declared:
            raw = get_path(doc, metric.path)
            if raw is MISSING or raw is None:
                continue
            try:
                metrics[metric.name] = metric.coerce(raw)[0]
            except InputRejected:
                continue
        return metrics


#: The clean records' topic name inside a reader of a raw-only mapping: they
#: never leave it.
JUDGED_HERE = "judged-at-read"


class MappingReader:
    """A raw-topic record read again through one ingest mapping.

    The mapping runs without its de-duplication (the ingest already did that,
    and an endpoint reading history must not drop what it re-reads); its
    alarm records are ignored.  A raw-only mapping (``clean_enabled = false``)
    is judged here in full, as if it made clean records: the ingest moved its
    messages unread, and this reader is where their metrics are read.
    """

    def __init__(self, plan: Plan, mapping: MappingPlan) -> None:
        self.mapping = dataclasses.replace(
            mapping, dedup_window_ms=None, clean_topic=mapping.clean_topic or JUDGED_HERE
        )
        own = Plan(plan.config, (self.mapping,), plan.catalog, plan.registry, plan.allowed_metrics)
        self._normalizer = Normalizer(own)

    def __call__(self, value: bytes | None, headers: Headers, now_ms: int) -> StreamItem:
        topic = next((v for k, v in headers or () if k == "mqtt_topic"), None)
        if topic is None or value is None:
            raise MalformedRecord("no mqtt_topic header or no value: not a raw-topic record")
        try:
            mqtt_topic = topic.decode()
        except UnicodeDecodeError:
            raise MalformedRecord("mqtt_topic header is not UTF-8") from None
        outcome = self._normalizer.process(mqtt_topic, value, Now(now_ms))
        if outcome.mapping is None:
            raise MalformedRecord(
                f"topic {mqtt_topic[:80]!r} is not one of mapping {self.mapping.name}"
            )
        clean = self.mapping.clean_topic
        records = [_clean_decoder.decode(r.value) for r in outcome.records if r.topic == clean]
        if not records:
            raise MalformedRecord(f"no valid metric ({', '.join(outcome.dead) or 'duplicate'})")
        first = records[0]
        return StreamItem(
            first.tenant,
            first.device_serial_id,
            {r.metric: r.value for r in records},
            first.ts,
            mqtt_topic,
            compact_json(value),
        )
