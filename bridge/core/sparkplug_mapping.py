"""Sparkplug B messages through a mapping: the same clean records, keys, headers,
catalog and registry checks, alarms and dead letters as a JSON device.

The :class:`bridge.core.normalize.Normalizer` hands a message here when its
mapping says ``payload.format = "sparkplug_b"``; what the topic and the birth
certificates explain is worked out by :mod:`bridge.core.sparkplug_state`.  Pure:
the rebirth requests to publish are queued in :attr:`SparkplugMapper.commands`
for the ingest adapter to send after the batch, and gaps in :attr:`gaps` for it
to log (sampled).

The extraction rules see these topic segments besides the filter's own:
``group``, ``message_type``, ``edge_node``, ``sparkplug_device`` (empty for a
node's own messages), ``tenant`` (the group) and ``device`` (``<edge
node>/<device>``, or the edge node for its own metrics): with the default rules
tenant is the group and device the edge node and device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from msgspec.structs import replace

from bridge.core.coerce import InputRejected
from bridge.core.plan import MappingPlan
from bridge.core.records import CleanRecord, DeviceEvent, Outgoing
from bridge.core.sparkplug import (
    SPARKPLUG_SEGMENTS,
    SparkplugTopic,
    decode_payload,
    parse_topic,
    rebirth_request,
    rebirth_topic,
)
from bridge.core.sparkplug_state import Resolved, SparkplugState
from bridge.core.timestamps import format_ms

if TYPE_CHECKING:
    from bridge.core.normalize import Normalizer, Now, Outcome, Route

# Gaps remembered for the log between two batches, at most.
MAX_GAP_NOTES = 100

_encode = msgspec.json.Encoder().encode
Delivery = tuple[int, bool]


def sparkplug_segments(topic: SparkplugTopic, device: str | None) -> dict[str, str]:
    """The segments of a message of ``topic`` about ``device`` (None: the node)."""
    return {
        "group": topic.group,
        "message_type": topic.message_type,
        "edge_node": topic.edge_node,
        "sparkplug_device": device or "",
        "tenant": topic.group,
        "device": f"{topic.edge_node}/{device}" if device else topic.edge_node,
    }


def topic_segments(topic: str) -> dict[str, str]:
    """The Sparkplug segments of a topic (all empty when it is not one), for
    code that reads a mapping's rules outside the normalizer (the console)."""
    parsed = parse_topic(topic)
    if isinstance(parsed, str):
        return dict.fromkeys(SPARKPLUG_SEGMENTS, "")
    return sparkplug_segments(parsed, parsed.device)


class SparkplugMapper:
    """The Sparkplug side of one Normalizer; its state outlives reloads."""

    def __init__(self, normalizer: Normalizer, state: SparkplugState | None = None) -> None:
        self.normalizer = normalizer
        self.state = state if state is not None else SparkplugState()
        # (MQTT topic, payload) of rebirth requests, sent by the adapter.
        self.commands: list[tuple[str, bytes]] = []
        # (topic, expected seq, received seq) of gaps, for the sampled log.
        self.gaps: list[tuple[str, int, int]] = []

    def process(
        self, route: Route, topic: str, payload: bytes, now: Now, out: Outcome, delivery: Delivery
    ) -> None:
        """What one message of a sparkplug_b mapping becomes, added to ``out``;
        ``delivery`` is the (QoS, retain flag) of the MQTT message."""
        mapping = route.mapping
        assert mapping is not None
        outcome = out
        normalizer = self.normalizer
        key = topic.encode()
        filter_segments = route.segments
        try:
            parsed = parse_topic(topic)
            if isinstance(parsed, str) or route.problem is not None:
                raise InputRejected("invalid_topic", route.problem or str(parsed))
            if parsed.message_type in ("STATE", "NCMD", "DCMD"):
                return  # host and command traffic, not telemetry
            size = len(payload)
            if size > normalizer.max_payload:
                limit = normalizer.max_payload
                raise InputRejected(
                    "payload_too_large", f"payload is {size} bytes, the limit is {limit}"
                )
            decoded = decode_payload(payload)
            if len(decoded.metrics) > normalizer.max_metrics:
                raise InputRejected(
                    "too_many_metrics",
                    f"{len(decoded.metrics)} metrics, the limit is {normalizer.max_metrics}",
                )
            spec = mapping.sparkplug
            assert spec is not None
            resolved = self.state.handle(
                parsed, decoded, now.epoch_ms, normalizer.max_string, spec.rebirth_interval_ms
            )
            segments = {**filter_segments, **sparkplug_segments(parsed, parsed.device)}
            tenant, device, key, headers = self._who(mapping, segments, topic, delivery)
        except InputRejected as refusal:
            normalizer._dead(mapping, topic, payload, now, refusal, key, outcome, binary=True)
            return
        if resolved.rebirth:
            self.commands.append(
                (rebirth_topic(parsed.group, parsed.edge_node), rebirth_request(now.epoch_ms))
            )
        if resolved.gap is not None and len(self.gaps) < MAX_GAP_NOTES:
            self.gaps.append((topic, *resolved.gap))
        self._records(mapping, topic, payload, now, outcome, resolved, tenant, device, key, headers)
        self._events(mapping, parsed, filter_segments, topic, outcome, resolved, delivery)
        if mapping.raw_topic is not None:
            raw_headers = [*headers, ("received_at", now.iso.encode())]
            outcome.records.append(Outgoing(mapping.raw_topic, key, payload, raw_headers))

    def _who(
        self,
        mapping: MappingPlan,
        segments: dict[str, str],
        topic: str,
        delivery: tuple[int, bool],
    ) -> tuple[str, str, bytes, list[tuple[str, bytes]]]:
        """Tenant, device, record key and headers, by the mapping's rules."""
        normalizer = self.normalizer
        tenant = normalizer._identity(mapping.tenant(segments, {}), "tenant")
        device = normalizer._identity(mapping.device(segments, {}), "device", joined=True)
        normalizer._check_identity(mapping, {}, tenant, device)
        identity = (topic, tenant, device, 1, delivery)
        known = normalizer._identities.get(identity)
        if known is None:
            known = normalizer._identify(mapping, segments, identity)
        key, headers = known
        return tenant, device, key, headers

    def _records(
        self,
        mapping: MappingPlan,
        topic: str,
        payload: bytes,
        now: Now,
        outcome: Outcome,
        resolved: Resolved,
        tenant: str,
        device: str,
        key: bytes,
        headers: list[tuple[str, bytes]],
    ) -> None:
        normalizer = self.normalizer
        allowed = normalizer.plan.allowed_metrics.get((tenant, device))
        alarms = normalizer.alarms
        records = outcome.records
        clean_topic = mapping.clean_topic
        assert clean_topic is not None  # the plan refuses a raw-only Sparkplug mapping
        base = CleanRecord(
            tenant=tenant,
            device_serial_id=device,
            metric="",
            metric_type="numeric",
            value=0,
            ts="",
            received_at=now.iso,
            schema_version=1,
        )
        for reading in resolved.readings:
            if isinstance(reading, InputRejected):
                normalizer._dead(mapping, topic, payload, now, reading, key, outcome, binary=True)
                continue
            name, value, metric_type, ts_ms = reading
            try:
                unit = normalizer._check_metric(name, value, metric_type, None, allowed)
            except InputRejected as refusal:
                refusal.metric = name
                normalizer._dead(mapping, topic, payload, now, refusal, key, outcome, binary=True)
                continue
            ts = format_ms(ts_ms)
            record = replace(
                base, metric=name, metric_type=metric_type, value=value, unit=unit, ts=ts
            )
            records.append(Outgoing(clean_topic, key, _encode(record), headers))
            outcome.clean += 1
            if alarms and metric_type == "numeric" and not isinstance(value, bool | str):
                for alarm in alarms.observe(tenant, device, name, value, ts_ms, ts):
                    records.append(Outgoing(normalizer.alarms_topic, key, _encode(alarm), headers))

    def _events(
        self,
        mapping: MappingPlan,
        parsed: SparkplugTopic,
        filter_segments: dict[str, str],
        topic: str,
        outcome: Outcome,
        resolved: Resolved,
        delivery: tuple[int, bool],
    ) -> None:
        """Online/offline records on the mapping's events topic.  A refusal of a
        device's identity drops only its event (its metrics were judged already)."""
        spec = mapping.sparkplug
        assert spec is not None
        for device, event, ts_ms in resolved.events:
            segments = {**filter_segments, **sparkplug_segments(parsed, device)}
            try:
                tenant, name, key, headers = self._who(mapping, segments, topic, delivery)
            except InputRejected:
                continue
            record = DeviceEvent(
                tenant=tenant, device_serial_id=name, event=event, ts=format_ms(ts_ms)
            )
            event_headers = [*headers, ("event", event.encode())]
            outcome.records.append(Outgoing(spec.events_topic, key, _encode(record), event_headers))

    def take_commands(self) -> list[tuple[str, bytes]]:
        commands, self.commands = self.commands, []
        return commands

    def take_gaps(self) -> list[tuple[str, int, int]]:
        gaps, self.gaps = self.gaps, []
        return gaps
