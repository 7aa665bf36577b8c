"""Execute compiled mapping plans: one MQTT message in, Kafka records out.

This is the hot path.  :class:`Normalizer` is fed a topic, the payload bytes and
the current time (read once per batch by the caller) and returns an
:class:`Outcome`: the records to produce and what happened, for the counters.

What a message becomes:

* It matches no mapping: nothing (the caller counts it and logs a sample).
* A problem with the message as a whole (too large, nested too deeply, not
  JSON, not an object, unsupported schema version, a bad topic segment, an
  unknown or inactive device, a device of another tenant, a device field that
  contradicts the topic, a bad time, no metrics): one dead-letter record with
  the reason.
* Otherwise each metric is judged on its own: each valid one becomes a clean
  record, each invalid one a dead-letter record naming the metric.  A partly
  valid message is therefore split, never dropped whole; the raw topic gets the
  original bytes once, because the message itself was readable.
* Anything else that goes wrong, a bug of the bridge that this message
  triggers: one ``internal_error`` dead letter naming the exception, so that a
  message the code cannot handle is acknowledged and set aside rather than
  ending the daemon (and, redelivered by the broker, ending it again).  The
  caller counts it and logs the traceback, sampled.
"""

from __future__ import annotations

import base64
import re
from math import isfinite
from typing import Any

import msgspec

from bridge.core.alarms import AlarmEvaluator
from bridge.core.coerce import InputRejected, typed_value
from bridge.core.dedup import Deduplicator
from bridge.core.extract import MISSING, get_path
from bridge.core.json_depth import nesting_depth
from bridge.core.plan import MappingPlan, Plan
from bridge.core.records import CleanRecord, DeadLetter, Headers, MetricType, Outgoing, Value
from bridge.core.settings import MetricSpec
from bridge.core.shown import shown
from bridge.core.sparkplug_mapping import SparkplugMapper
from bridge.core.sparkplug_state import SparkplugState
from bridge.core.timestamps import TimestampError, format_ms
from bridge.core.topics import segment_problem

# Headers the bridge sets; a user property of the same name is not carried.
RESERVED_HEADERS = frozenset(
    {"tenant", "device", "mqtt_topic", "schema_version", "received_at", "reason"}
)

# One metric read from a message: name, value, type, unit, quality.
Reading = tuple[str, Value, MetricType, str | None, str | None]

# What the record key and base headers depend on: topic, tenant, device,
# schema version, and the MQTT (QoS, retain flag) that header templates may use.
Identity = tuple[str, str, str, int | None, tuple[int, bool]]

# Entries kept by each per-topic and per-identity cache before it starts over.
# Together they cost at most 1.3 KiB per device (measured with tracemalloc,
# bridge/ops/memory_budget.py CACHE_ENTRY_BYTES), so the bound keeps them
# near 13 MiB even under a flood of made-up topics; a gateway with more
# devices than this still works, at the uncached speed part of the time.
CACHE_ENTRIES = 10_000


# Copies of one message's payload in its dead letters, at most (bytes).
DEAD_LETTER_COPIES_BYTES = 1 << 20
# A spool segment's header and a record's framing, generously.
SPOOL_FRAMING = 1024
# Kafka's default message.max.bytes, librdkafka's client-side bound of a record.
KAFKA_MESSAGE_MAX_BYTES = 1_000_000
# Room a record needs beside its payload: the MQTT topic (at most 65,535 bytes)
# in a header, the key and the bridge's other headers.
RECORD_ROOM = 65_535 + 4_096


def kafka_record_limit(properties: dict[str, str]) -> int:
    """librdkafka's ``message.max.bytes`` as configured in ``kafka.properties``."""
    try:
        return int(properties.get("message.max.bytes", KAFKA_MESSAGE_MAX_BYTES))
    except ValueError:  # refused by check-config; the default until then
        return KAFKA_MESSAGE_MAX_BYTES


class Route:
    """What a topic alone decides, worked out once per topic: its mapping, the
    captured segments (shared by every message on the topic: never mutated)
    and, when a segment cannot be an identifier, why (the detail of an
    ``invalid_topic`` refusal)."""

    __slots__ = ("mapping", "problem", "segments")

    def __init__(
        self, mapping: MappingPlan | None, segments: dict[str, str], problem: str | None
    ) -> None:
        self.mapping = mapping
        self.segments = segments
        self.problem = problem


_NO_ROUTE = Route(None, {}, None)
#: The payload as a raw-only mapping's getters see it: never read.
_UNREAD: dict[str, Any] = {}


class Now:
    """The receive time of a batch, read once by the caller and formatted once."""

    __slots__ = ("epoch_ms", "iso", "received_at_header")

    def __init__(self, epoch_ms: int) -> None:
        self.epoch_ms = epoch_ms
        self.iso = format_ms(epoch_ms)
        # The raw record's header, the same for every message of the batch.
        self.received_at_header = ("received_at", self.iso.encode())


class Outcome:
    """What one message became.  ``mapping`` is None when no mapping matched.
    ``error`` is the exception the crash barrier caught, for the caller to log
    (its reason in ``dead`` is ``internal_error``)."""

    __slots__ = (
        "clean", "dead", "duplicate", "error", "mapping", "properties_truncated", "records"
    )  # fmt: skip

    def __init__(self, mapping: str | None) -> None:
        self.mapping = mapping
        self.records: list[Outgoing] = []
        self.clean = 0
        self.dead: list[str] = []
        self.duplicate = False
        self.properties_truncated = False
        self.error: Exception | None = None


INTERNAL_ERROR = "internal_error"


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def _field(doc: dict[str, Any], keys: tuple[str, ...]) -> object:
    """The value at ``keys`` in a decoded object, or MISSING; a one-level path
    (most of them) is one ``dict.get``, without :func:`get_path`'s loop."""
    if len(keys) == 1:
        return doc.get(keys[0], MISSING)
    return get_path(doc, keys)


def payload_text(payload: bytes) -> tuple[str, str]:
    """The payload for a dead letter: UTF-8 text, or base64 when it is not UTF-8."""
    try:
        return payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode("ascii"), "base64"


class Normalizer:
    """Runs a :class:`Plan`; holds the little state rules need (dedup, alarms)."""

    def __init__(
        self,
        plan: Plan,
        previous: Normalizer | None = None,
        sparkplug_state: SparkplugState | None = None,
    ) -> None:
        """``sparkplug_state`` (alias tables, sequence numbers) is shared by the
        Normalizers of successive reloads: the daemon owns it and saves it."""
        self.plan = plan
        limits = plan.config.limits
        # Every record must fit in a Kafka message (librdkafka refuses a larger
        # one by raising from produce()) and in a spool segment (the spool
        # refuses it too): no message may make either happen.  (Below about
        # 150 KB of either, half is kept for the payload and a topic of tens
        # of kilobytes is not provided for.)
        limit = kafka_record_limit(plan.config.kafka.properties)
        spool = plan.config.spool
        if spool.enabled:
            limit = min(limit, spool.segment_bytes - SPOOL_FRAMING)
        room = RECORD_ROOM + limits.max_user_property_bytes
        self.max_record = max(limit - room, limit // 2)
        self.max_payload = min(limits.max_payload_bytes, self.max_record)
        self.max_string = limits.max_string_length
        self.max_segment = limits.max_segment_length
        self.max_metrics = limits.max_metrics
        self.max_depth = limits.max_json_depth
        self.identifier = re.compile(limits.identifier_pattern)
        self.max_user_property_bytes = limits.max_user_property_bytes
        self.catalog = plan.catalog
        self.registry = plan.registry
        self.alarms_topic = plan.config.alarms_topic
        self.alarms = AlarmEvaluator(plan.catalog, limits.max_alarm_series)
        self.dedup = {
            m.name: Deduplicator(m.dedup_window_ms, m.dedup_max_entries)
            for m in plan.mappings
            if m.dedup_window_ms is not None
        }
        # Most of the per-message work that depends only on the topic, or on the
        # topic and the identity, is the same for every message of a device:
        # match, segment checks, key, base headers.  Both caches belong to this
        # plan; a reload builds a new Normalizer and so starts them empty.
        self._routes: dict[str, Route] = {}
        self._identities: dict[Identity, tuple[bytes, Headers]] = {}
        # A raw-only mapping's tenant and device come from the topic, so the
        # topic and the delivery find its key and headers: one look-up.
        self._raw_identities: dict[tuple[str, tuple[int, bool]], tuple[bytes, Headers]] = {}
        self.sparkplug: SparkplugMapper | None = None
        if any(m.sparkplug is not None for m in plan.mappings):
            self.sparkplug = SparkplugMapper(self, sparkplug_state)
        if previous is not None:
            self._adopt(previous)

    def _adopt(self, previous: Normalizer) -> None:
        """Keep the state of rules that a reload did not change: remembered event
        ids of a mapping with the same name and window, and the raised alarms
        when the alarm rules are the same."""
        for name, dedup in self.dedup.items():
            old = previous.dedup.get(name)
            if old is not None and old.window_ms == dedup.window_ms:
                old.max_entries = dedup.max_entries
                self.dedup[name] = old
        if previous.alarms.rules == self.alarms.rules:
            previous.alarms.resize(self.alarms.max_series)
            self.alarms = previous.alarms
        else:
            self.alarms.evicted = previous.alarms.evicted  # a counter never goes back

    # ------------------------------------------------------------------ entry
    def process(
        self,
        topic: str,
        payload: bytes,
        now: Now,
        user_properties: list[tuple[str, str]] | None = None,
        qos: int = 0,
        retain: bool = False,
    ) -> Outcome:
        """``user_properties`` are the MQTT 5 user properties of the message,
        carried as Kafka headers of its clean and raw records; ``qos`` and
        ``retain`` fill the ``{mqtt_qos}`` and ``{mqtt_retain}`` of header
        templates.

        Never raises (short of MemoryError and the like): the outer ``try`` is
        the crash barrier, one per message, free when nothing is raised."""
        try:
            route = self._routes.get(topic)
            if route is None:
                route = self._route(topic)
            mapping = route.mapping
            if mapping is None:
                return Outcome(None)
            outcome = Outcome(mapping.name)
            if mapping.sparkplug is not None:
                assert self.sparkplug is not None
                self.sparkplug.process(route, topic, payload, now, outcome, (qos, retain))
                return outcome
            try:
                carried = self._carried(user_properties, outcome) if user_properties else []
                delivery = (qos, retain)
                self._message(mapping, route, topic, payload, now, outcome, carried, delivery)
            except InputRejected as refusal:
                self._dead(mapping, topic, payload, now, refusal, topic.encode(), outcome)
            return outcome
        except Exception as exc:  # the crash barrier: see the module doc
            return self._internal_error(topic, payload, now, exc)

    def _internal_error(self, topic: str, payload: bytes, now: Now, exc: Exception) -> Outcome:
        """The outcome of a message the code failed on: records made before the
        failure are dropped, an ``internal_error`` dead letter takes their place
        when the topic's mapping is known."""
        route = self._routes.get(topic)
        mapping = route.mapping if route is not None else None
        outcome = Outcome(mapping.name if mapping is not None else None)
        outcome.error = exc
        refusal = InputRejected(
            INTERNAL_ERROR,
            f"{type(exc).__name__}: the bridge failed on this message ({shown(str(exc), 200)}); "
            "this is a bug, please report it with this record",
        )
        if mapping is not None:
            try:
                self._dead(mapping, topic, payload, now, refusal, topic.encode(), outcome)
                return outcome
            except Exception:  # the dead letter itself cannot be made: count it only
                outcome.records.clear()
        outcome.dead[:] = [INTERNAL_ERROR]
        return outcome

    def _route(self, topic: str) -> Route:
        """The first mapping whose filter matches ``topic``, remembered."""
        routes = self._routes
        if len(routes) >= CACHE_ENTRIES:
            routes.clear()
        levels = topic.split("/")
        route = _NO_ROUTE
        for mapping in self.plan.mappings:
            segments = mapping.filter.match(levels)
            if segments is not None:
                route = Route(mapping, segments, self._segment_problem(segments))
                break
        routes[topic] = route
        return route

    def _segment_problem(self, segments: dict[str, str]) -> str | None:
        for segment, text in segments.items():
            problem = self._identifier_problem(text)
            if problem:
                return f"topic segment {{{segment}}} {problem}"
        return None

    def _identifier_problem(self, text: str) -> str | None:
        """Why ``text`` cannot be a tenant, device or topic segment, or None."""
        problem = segment_problem(text, self.max_segment)
        if problem is None and not self.identifier.fullmatch(text):
            problem = f"does not match limits.identifier_pattern {self.identifier.pattern!r}"
        return problem

    # ------------------------------------------------------------------ steps
    def _message(
        self,
        mapping: MappingPlan,
        route: Route,
        topic: str,
        payload: bytes,
        now: Now,
        outcome: Outcome,
        carried: Headers,
        delivery: tuple[int, bool],
    ) -> None:
        if len(payload) > self.max_payload:
            raise InputRejected(
                "payload_too_large",
                f"payload is {len(payload)} bytes, the limit is {self.max_payload}",
            )
        if route.problem is not None:
            raise InputRejected("invalid_topic", route.problem)
        segments = route.segments
        if mapping.clean_topic is None:
            # Raw-only (pass-through): the payload is not read, so nothing in
            # it is judged; tenant and device come from the topic (the plan
            # allows nothing else) and the raw record is the only one.
            known = self._raw_identities.get((topic, delivery))
            if known is None:
                _t, _d, key, headers = self._known(
                    mapping, segments, topic, _UNREAD, None, delivery
                )
                if len(self._raw_identities) >= CACHE_ENTRIES:
                    self._raw_identities.clear()
                self._raw_identities[(topic, delivery)] = (key, headers)
            else:
                key, headers = known
            raw_topic = mapping.raw_topic
            assert raw_topic is not None  # the plan refuses a mapping with neither topic
            raw_headers = [*headers, *carried, now.received_at_header]
            outcome.records.append(Outgoing(raw_topic, key, payload, raw_headers))
            return
        # Bound the nesting before decoding (see json_depth): counting the
        # opening brackets settles almost every message.
        if payload.count(b"[") + payload.count(b"{") > self.max_depth:
            depth = nesting_depth(payload, self.max_depth)
            if depth > self.max_depth:
                raise InputRejected(
                    "too_deep",
                    f"payload nests at least {depth} levels deep, "
                    f"the limit is limits.max_json_depth = {self.max_depth}",
                )
        try:
            doc = _decode(payload)
        except msgspec.DecodeError as exc:
            raise InputRejected("invalid_json", f"payload is not valid JSON: {exc}") from None
        except RecursionError:  # only if the stack was already deep: the scan bounds it
            raise InputRejected("too_deep", "payload nests too deeply to decode") from None
        if not isinstance(doc, dict):
            raise InputRejected(
                "not_an_object", f"payload is a JSON {type(doc).__name__}, not an object"
            )
        schema_version = self._schema_version(mapping, doc)
        tenant, device, key, headers = self._known(
            mapping, segments, topic, doc, schema_version, delivery
        )
        try:
            self._check_identity(mapping, doc, tenant, device)
            ts_ms = self._event_ms(mapping, doc, now)
            event_id = quality = None
            if mapping.event_id is not None:
                event_id = self._optional_text(mapping.event_id, segments, doc, "event_id")
                if event_id is not None and self._is_repeat(mapping, tenant, device, event_id, now):
                    outcome.duplicate = True
                    return
            if mapping.quality is not None:
                quality = self._optional_text(mapping.quality, segments, doc, "quality")
        except InputRejected as refusal:
            self._dead(mapping, topic, payload, now, refusal, key, outcome)
            return
        if carried:
            headers = [*headers, *carried]
        ts = format_ms(ts_ms)
        received_at = now.iso
        records = outcome.records
        try:
            readings = self._readings(mapping, segments, doc)
        except InputRejected as refusal:
            self._dead(mapping, topic, payload, now, refusal, key, outcome)
            return
        allowed = self.plan.allowed_metrics.get((tenant, device))
        # Without a catalog or a per-device list there is nothing to check per
        # metric: skip the call (it runs for every metric of every message).
        checked = allowed is not None or bool(self.catalog)
        alarms = self.alarms if self.alarms.rules else None
        clean_topic = mapping.clean_topic
        for reading in readings:
            if isinstance(reading, InputRejected):
                self._dead(mapping, topic, payload, now, reading, key, outcome)
                continue
            name, value, metric_type, unit, metric_quality = reading
            if checked:
                try:
                    unit = self._check_metric(name, value, metric_type, unit, allowed)
                except InputRejected as refusal:
                    refusal.metric = name
                    self._dead(mapping, topic, payload, now, refusal, key, outcome)
                    continue
            record = CleanRecord(
                tenant=tenant,
                device_serial_id=device,
                metric=name,
                metric_type=metric_type,
                value=value,
                unit=unit,
                ts=ts,
                received_at=received_at,
                schema_version=schema_version,
                event_id=event_id,
                quality=metric_quality or quality,
            )
            records.append(Outgoing(clean_topic, key, _encode(record), headers))
            outcome.clean += 1
            if (
                alarms is not None
                and metric_type == "numeric"
                and not isinstance(value, bool | str)
            ):
                for alarm in alarms.observe(tenant, device, name, value, ts_ms, ts):
                    records.append(Outgoing(self.alarms_topic, key, _encode(alarm), headers))
        if mapping.raw_topic is not None:
            raw_headers = [*headers, now.received_at_header]
            records.append(Outgoing(mapping.raw_topic, key, payload, raw_headers))

    def _known(
        self,
        mapping: MappingPlan,
        segments: dict[str, str],
        topic: str,
        doc: dict[str, Any],
        schema_version: int | None,
        delivery: tuple[int, bool],
    ) -> tuple[str, str, bytes, Headers]:
        """Tenant, device, record key and base headers of a message: checked
        and built the first time an identity is seen, then remembered."""
        raw_tenant = mapping.tenant(segments, doc)
        raw_device = mapping.device(segments, doc)
        if isinstance(raw_tenant, str) and isinstance(raw_device, str):  # else maybe unhashable
            known = self._identities.get((topic, raw_tenant, raw_device, schema_version, delivery))
            if known is not None:
                return raw_tenant, raw_device, known[0], known[1]
        tenant = self._identity(raw_tenant, "tenant")
        device = self._identity(raw_device, "device")
        identity = (topic, tenant, device, schema_version, delivery)
        key, headers = self._identify(mapping, segments, identity)
        return tenant, device, key, headers

    def _identify(
        self, mapping: MappingPlan, segments: dict[str, str], identity: Identity
    ) -> tuple[bytes, Headers]:
        """Remember the record key and base headers of a checked identity seen
        for the first time.  The headers list is shared by every record of
        that identity: it is never mutated."""
        topic, tenant, device, schema_version, (qos, retain) = identity
        key_values = {**segments, "tenant": tenant, "device": device}
        headers: Headers = [
            ("tenant", tenant.encode()),
            ("device", device.encode()),
            ("mqtt_topic", topic.encode()),
        ]
        if schema_version is not None:  # None: a raw-only mapping, which never reads it
            headers.append(("schema_version", str(schema_version).encode()))
        key = mapping.key.render(key_values).encode()
        if mapping.headers:
            key_values["mqtt_qos"] = str(qos)
            key_values["mqtt_retain"] = "true" if retain else "false"
            headers.extend((name, t.render(key_values).encode()) for name, t in mapping.headers)
        known = (key, headers)
        if len(self._identities) >= CACHE_ENTRIES:
            self._identities.clear()
        self._identities[identity] = known
        return known

    def _carried(self, properties: list[tuple[str, str]], outcome: Outcome) -> Headers:
        """The user properties to carry as headers, within the byte bound; names
        the bridge sets itself are not overridden."""
        budget = self.max_user_property_bytes
        carried: Headers = []
        for name, value in properties:
            budget -= len(name) + len(value)
            if budget < 0:
                outcome.properties_truncated = True
                break
            if name not in RESERVED_HEADERS:
                carried.append((name, value.encode()))
        return carried

    def _is_repeat(
        self, mapping: MappingPlan, tenant: str, device: str, event_id: str, now: Now
    ) -> bool:
        """Whether the mapping deduplicates and saw this event id within its window;
        ids are scoped to the device, so two devices may reuse an id."""
        dedup = self.dedup.get(mapping.name)
        return dedup is not None and dedup.seen(f"{tenant}\x00{device}\x00{event_id}", now.epoch_ms)

    def _schema_version(self, mapping: MappingPlan, doc: dict[str, Any]) -> int:
        if mapping.schema_version_field is None:
            return 1
        version = _field(doc, mapping.schema_version_field)
        if type(version) is int and version in mapping.schema_versions:
            return version  # the usual case, before the checks that say what is wrong
        if version is MISSING:
            raise InputRejected("schema_version_unsupported", "schema_version is missing")
        if isinstance(version, bool) or not isinstance(version, int):
            raise InputRejected(
                "schema_version_unsupported", f"schema_version {shown(version)} is not an integer"
            )
        if version not in mapping.schema_versions:
            supported = ", ".join(str(v) for v in sorted(mapping.schema_versions))
            raise InputRejected(
                "schema_version_unsupported",
                f"schema_version {shown(version)} is not supported (supported: {supported})",
            )
        return version

    def _identity(self, value: object, what: str, joined: bool = False) -> str:
        """A checked tenant or device.  ``joined``: the value is topic levels
        joined by ``/`` (a Sparkplug device is ``edge_node/device``), each of
        which must be an identifier."""
        if value is MISSING or value is None:
            raise InputRejected("missing_field", f"{what} is missing from the message")
        if not isinstance(value, str):
            raise InputRejected("invalid_field", f"{what} {shown(value)} is not a string")
        problem = segment_problem(value, self.max_segment) if joined else None
        for part in value.split("/") if joined else (value,):
            problem = problem or self._identifier_problem(part)
        if problem:
            raise InputRejected("invalid_field", f"{what} {shown(value)} {problem}")
        return value

    def _check_identity(
        self, mapping: MappingPlan, doc: dict[str, Any], tenant: str, device: str
    ) -> None:
        if mapping.device_field is not None:
            claimed = _field(doc, mapping.device_field)
            if claimed is not MISSING and claimed != device:
                raise InputRejected(
                    "device_mismatch",
                    f"payload device {shown(claimed)} does not match the topic's device {device!r}",
                )
        if self.registry:
            devices = self.registry.get(tenant)
            spec = devices.get(device) if devices is not None else None
            if spec is None:
                owners = self.plan.device_tenants.get(device)
                if owners:
                    raise InputRejected(
                        "device_tenant_mismatch",
                        f"device {device!r} is registered for tenant "
                        f"{' and '.join(map(repr, owners))}, not for {tenant!r}",
                    )
                raise InputRejected(
                    "unknown_device", f"device {device!r} is not registered for tenant {tenant!r}"
                )
            if not spec.active:
                raise InputRejected(
                    "inactive_device", f"device {device!r} of tenant {tenant!r} is inactive"
                )

    def _event_ms(self, mapping: MappingPlan, doc: dict[str, Any], now: Now) -> int:
        raw = _field(doc, mapping.ts_field) if mapping.ts_field is not None else MISSING
        if raw is MISSING or raw is None:
            if mapping.ts_required:
                raise InputRejected(
                    "invalid_ts", "the event time is missing and the mapping requires it"
                )
            return now.epoch_ms
        try:
            return mapping.ts_parser(raw)
        except TimestampError as exc:
            field = ".".join(mapping.ts_field or ())
            raise InputRejected("invalid_ts", f"{field}: {exc}") from None

    @staticmethod
    def _optional_text(
        getter: Any, segments: dict[str, str], doc: dict[str, Any], what: str
    ) -> str | None:
        if getter is None:
            return None
        value = getter(segments, doc)
        if value is MISSING or value is None:
            return None
        if not isinstance(value, str):
            raise InputRejected("invalid_field", f"{what} {shown(value)} is not a string")
        return value

    # ------------------------------------------------------------------ metrics

    def _readings(
        self, mapping: MappingPlan, segments: dict[str, str], doc: dict[str, Any]
    ) -> list[Reading | InputRejected]:
        """Each metric of the message, or a InputRejected for one that cannot be read.
        A InputRejected raised (not returned) concerns the whole message.  Lists, not
        generators: a generator frame per message costs more than the list."""
        if mapping.metrics_object is not None:
            return self._object_readings(mapping, doc)
        if mapping.single is not None:
            return [self._single_reading(mapping, segments, doc)]
        return self._declared_readings(mapping, doc)

    def _object_readings(
        self, mapping: MappingPlan, doc: dict[str, Any]
    ) -> list[Reading | InputRejected]:
        assert mapping.metrics_object is not None
        metrics = _field(doc, mapping.metrics_object)
        if metrics is MISSING or not isinstance(metrics, dict) or not metrics:
            where = ".".join(mapping.metrics_object)
            raise InputRejected("missing_metrics", f"{where} must be a non-empty object")
        if len(metrics) > self.max_metrics:
            where = ".".join(mapping.metrics_object)
            raise InputRejected(
                "too_many_metrics",
                f"{where} has {len(metrics)} metrics, the limit is {self.max_metrics}",
            )
        readings: list[Reading | InputRejected] = []
        max_segment = self.max_segment
        for name, raw in metrics.items():
            if not name or len(name) > max_segment:
                readings.append(
                    InputRejected(
                        "invalid_metric_name",
                        f"metric name {shown(name)} is empty or too long",
                        name,
                    )
                )
                continue
            # A finite float, the usual metric, without the call (typed_value's
            # first answer for it would be the same).
            if raw.__class__ is float and isfinite(raw):
                readings.append((name, raw, "numeric", None, None))
                continue
            try:
                value, metric_type = typed_value(raw, self.max_string)
            except InputRejected as refusal:
                where = ".".join(mapping.metrics_object)
                readings.append(
                    InputRejected(refusal.reason, f"{where}.{name}: {refusal.detail}", name)
                )
                continue
            readings.append((name, value, metric_type, None, None))
        return readings

    def _declared_readings(
        self, mapping: MappingPlan, doc: dict[str, Any]
    ) -> list[Reading | InputRejected]:
        readings: list[Reading | InputRejected] = []
        present = 0
        for metric in mapping.declared:
            raw = _field(doc, metric.path)
            if raw is MISSING or raw is None:
                if metric.required:
                    field = ".".join(metric.path)
                    readings.append(
                        InputRejected("missing_field", f"{field} is missing", metric.name)
                    )
                continue
            present += 1
            try:
                value, metric_type = metric.coerce(raw)
            except InputRejected as refusal:
                readings.append(InputRejected(refusal.reason, refusal.detail, metric.name))
                continue
            readings.append((metric.name, value, metric_type, metric.unit, None))
        if not present:
            # Only optional fields, none of them sent: nothing to report per metric,
            # and the message must not pass as valid with no metric at all.
            fields = ", ".join(".".join(m.path) for m in mapping.declared)
            raise InputRejected(
                "missing_metrics", f"none of the declared fields is present ({fields})"
            )
        return readings

    def _single_reading(
        self, mapping: MappingPlan, segments: dict[str, str], doc: dict[str, Any]
    ) -> Reading | InputRejected:
        """The one reading; a value its rule refuses is a metric-level refusal (the
        message was readable, so its raw bytes still go to the raw topic)."""
        single = mapping.single
        assert single is not None
        name = single.name(segments, doc)
        if not isinstance(name, str) or not name or len(name) > self.max_segment:
            raise InputRejected(
                "invalid_metric_name", f"metric name {shown(name)} is missing, empty or too long"
            )
        raw = _field(doc, single.value_path)
        if raw is MISSING or raw is None:
            raise InputRejected("missing_metrics", f"{'.'.join(single.value_path)} is missing")
        try:
            value, metric_type = single.coerce(raw)
        except InputRejected as refusal:
            return InputRejected(refusal.reason, refusal.detail, name)
        unit = self._optional_text(single.unit, segments, doc, "unit")
        quality = self._optional_text(single.quality, segments, doc, "quality")
        return name, value, metric_type, unit, quality

    def _check_metric(
        self,
        name: str,
        value: Value,
        metric_type: MetricType,
        unit: str | None,
        allowed: frozenset[str] | None,
    ) -> str | None:
        """Catalog and registry checks; returns the unit to write."""
        if allowed is not None and name not in allowed:
            raise InputRejected("unknown_metric", f"metric {name!r} is not allowed for this device")
        if not self.catalog:
            return unit
        spec: MetricSpec | None = self.catalog.get(name)
        if spec is None:
            raise InputRejected("unknown_metric", f"metric {name!r} is not in the metric catalog")
        if spec.type != metric_type:
            raise InputRejected(
                "metric_type_mismatch",
                f"metric {name!r} is {metric_type}, the catalog says {spec.type}",
            )
        if metric_type == "numeric" and not isinstance(value, bool | str):
            if spec.min is not None and value < spec.min:
                raise InputRejected(
                    "value_out_of_range", f"metric {name!r} = {value} is below min {spec.min}"
                )
            if spec.max is not None and value > spec.max:
                raise InputRejected(
                    "value_out_of_range", f"metric {name!r} = {value} is above max {spec.max}"
                )
        return unit or spec.unit

    # ------------------------------------------------------------------ dead letters
    def _dead(
        self,
        mapping: MappingPlan,
        topic: str,
        payload: bytes,
        now: Now,
        refusal: InputRejected,
        key: bytes,
        outcome: Outcome,
        binary: bool = False,
    ) -> None:
        """``binary``: the payload is not text (Sparkplug's protobuf), so it is
        always written as base64, even when its bytes happen to be UTF-8."""
        # An oversized payload is not copied into the dead letter: that would make
        # the dead-letter record as large as what was refused.
        if refusal.reason == "payload_too_large":
            text, encoding = "", "utf-8"
        elif binary:
            text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
        else:
            text, encoding = payload_text(payload)
        letter = DeadLetter(
            reason=refusal.reason,
            detail=refusal.detail,
            mqtt_topic=topic,
            mapping=mapping.name,
            metric=refusal.metric,
            payload=text,
            received_at=now.iso,
        )
        # Set only when needed: omit_defaults compares by identity, so passing an
        # equal "utf-8" would still put the field on the wire.
        if encoding == "base64":
            letter.payload_encoding = "base64"
        value = _encode(letter)
        if len(value) > self.max_record:
            # Escaping can make the copy up to six times the payload (control
            # characters are written as \u0001): past what Kafka takes, none.
            letter.payload = ""
            letter.detail += f" (the payload, {len(payload)} bytes, is too large to copy here)"
            value = _encode(letter)
        elif outcome.dead and (len(outcome.dead) + 1) * len(text) > DEAD_LETTER_COPIES_BYTES:
            # One dead letter per refused metric, each with a copy: 256 metrics
            # of a 64 KiB message would write 16 MiB.  Past the budget, the
            # message's first dead letter holds the payload.
            letter.payload = ""
            letter.detail += " (the payload is in this message's first dead letter)"
            value = _encode(letter)
        headers = [("reason", refusal.reason.encode()), ("mqtt_topic", topic.encode())]
        outcome.records.append(Outgoing(mapping.dead_letter_topic, key, value, headers))
        outcome.dead.append(refusal.reason)
