"""The live stream's wire format, pure: event envelopes, resume cursors, client
filters and the filter-changing messages a WebSocket client sends.

No sockets, no clock: the caller passes times in.  Everything a client receives
is built here, so the format is written down in one place (docs/streaming.md
describes it for dashboard authors).

Why a cursor is a vector and not one offset: the stream interleaves the
partitions of every topic it reads.  "I have seen offset 41 of partition 2"
says nothing about partitions 0, 1 and 3, and a client filtering on one device
may not have received anything from them.  So an SSE event's ``id`` is the
position of the stream in *every* partition right after that event:
``telemetry.clean@0:17,1:9,2:42,3:5`` (topic, then partition:next-offset
pairs; several topics separated by ``;``).  Every record before those offsets
was either delivered to the client or did not match its filters, so resuming
means reading each partition from its offset on.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from bridge.core.records import CleanRecord

#: Version of the envelope format (``schema_version`` of every event).
ENVELOPE_SCHEMA_VERSION = 1
EVENT_TYPE = "telemetry.update"

#: Bounds on what one client may ask for, so a filter cannot grow without limit.
MAX_FILTER_ITEMS = 1000
MAX_NAME_LENGTH = 256
MAX_CURSOR_LENGTH = 8192
#: Kafka's own bounds: partitions are int32, offsets int64.
MAX_PARTITION = 2**31 - 1
MAX_OFFSET = 2**63 - 1

Positions = dict[str, dict[int, int]]
"""Stream position: topic -> partition -> next offset (last seen + 1)."""


# --------------------------------------------------------------------------- time
def iso_utc(epoch_ns: int) -> str:
    """``2026-02-25T14:00:00.123Z``: millisecond precision, always UTC."""
    moment = datetime.fromtimestamp(epoch_ns / 1e9, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------- cursor
class CursorError(ValueError):
    """A ``Last-Event-ID`` that is not a cursor this server wrote."""


def encode_cursor(positions: Mapping[str, Mapping[int, int]]) -> str:
    """``topic@partition:offset,...;topic2@...``, topics and partitions sorted.

    Kafka topic names use only ``[A-Za-z0-9._-]``, so ``@ : , ;`` cannot occur
    in them and need no escaping; the result is valid in an SSE ``id:`` line
    and in an HTTP header.
    """
    return ";".join(
        topic + "@" + ",".join(f"{p}:{o}" for p, o in sorted(parts.items()))
        for topic, parts in sorted(positions.items())
        if parts
    )


#: ``partition:offset`` in ASCII digits, no sign, no more digits than the
#: largest int32 / int64 has (``str.isdigit`` would take ``²`` and 5,000 digits).
_PAIR = re.compile(r"([0-9]{1,10}):([0-9]{1,19})", re.ASCII)


def decode_cursor(text: str) -> Positions:
    """The inverse of :func:`encode_cursor`; :class:`CursorError` on anything else,
    including numbers outside Kafka's bounds (partition int32, offset int64), so
    that whatever this returns can be handed to librdkafka."""
    if not text or len(text) > MAX_CURSOR_LENGTH:
        raise CursorError("empty or too long")
    positions: Positions = {}
    for segment in text.split(";"):
        topic, sep, pairs = segment.partition("@")
        if not sep or not topic or not pairs or topic in positions:
            raise CursorError(f"bad topic segment {segment[:80]!r}")
        parts: dict[int, int] = {}
        for pair in pairs.split(","):
            match = _PAIR.fullmatch(pair)
            if match is None:
                raise CursorError(f"bad partition:offset {pair[:80]!r}")
            partition, offset = int(match[1]), int(match[2])
            if partition > MAX_PARTITION or offset > MAX_OFFSET or partition in parts:
                raise CursorError(f"bad partition:offset {pair[:80]!r}")
            parts[partition] = offset
        positions[topic] = parts
    return positions


def kafka_event_id(topic: str, partition: int, offset: int) -> str:
    """The envelope's ``event_id`` of a record read from Kafka: unique and the
    same on every daemon instance, so a client can de-duplicate across them."""
    return f"{topic}:{partition}:{offset}"


# --------------------------------------------------------------------------- records
class MalformedRecord(ValueError):
    """A Kafka value that is not a clean record; the message says why."""


@dataclass(frozen=True, slots=True)
class ParsedRecord:
    """What the stream needs of a clean record: its routing keys and its JSON,
    without insignificant whitespace (an SSE ``data:`` line cannot hold a
    newline)."""

    tenant: str
    device: str
    metric: str
    json: bytes


_record_decoder = msgspec.json.Decoder(CleanRecord)


def parse_record(value: bytes | None) -> ParsedRecord:
    """Validate a clean record against the ingest's contract.

    The original bytes are kept (fields a newer ingest adds pass through); only
    whitespace is stripped when there is a line break in them.
    """
    record = decode_clean(value)
    assert value is not None
    return ParsedRecord(record.tenant, record.device_serial_id, record.metric, compact_json(value))


def decode_clean(value: bytes | None) -> CleanRecord:
    """A clean record, or :class:`MalformedRecord` saying why it is not one."""
    if not value:
        raise MalformedRecord("empty value")
    try:
        return _record_decoder.decode(value)
    except msgspec.DecodeError as exc:
        raise MalformedRecord(str(exc)) from None


def compact_json(value: bytes) -> bytes:
    """Valid JSON bytes without line breaks (an SSE ``data:`` line cannot hold
    one); re-formatted only when there is one."""
    raw = bytes(value)
    if b"\n" in raw or b"\r" in raw:
        raw = msgspec.json.format(raw, indent=-1)
    return raw


class Envelope(msgspec.Struct):
    """One event as clients receive it; ``data`` is the clean record verbatim."""

    event_id: str
    type: str
    schema_version: int
    sent_at: str
    data: msgspec.Raw


_encode = msgspec.json.Encoder().encode


def encode_event(event_id: str, sent_at: str, record_json: bytes) -> bytes:
    """The envelope's JSON, built once per record and shared by every client."""
    return _encode(
        Envelope(event_id, EVENT_TYPE, ENVELOPE_SCHEMA_VERSION, sent_at, msgspec.Raw(record_json))
    )


def sse_frame(data: bytes, event_id: str | None = None) -> bytes:
    """One Server-Sent Event.  ``data`` must hold no line break (our JSON never does)."""
    if event_id is None:
        return b"data: " + data + b"\n\n"
    return b"id: " + event_id.encode() + b"\ndata: " + data + b"\n\n"


def sse_retry(delay_ms: int) -> bytes:
    """The reconnection delay for EventSource (the ``retry:`` field), sent
    before ending a response the client should come back to."""
    return b"retry: " + str(delay_ms).encode() + b"\n\n"


def sse_comment(text: str) -> bytes:
    """A comment line: keeps proxies and the connection alive, ignored by EventSource."""
    return b": " + text.encode() + b"\n\n"


# --------------------------------------------------------------------------- filters
class FilterError(ValueError):
    """A filter a client asked for that cannot be applied (bad value, too big)."""


class TenantForbidden(FilterError):
    """A client asked for a tenant its token does not grant."""


@dataclass(frozen=True, slots=True)
class Filters:
    """What one client wants.  ``None`` means everything; an empty set, nothing
    (a client that unsubscribed from its last device receives no telemetry)."""

    tenant: str | None
    devices: frozenset[str] | None = None
    metrics: frozenset[str] | None = None
    #: Device groups (``[devices.<tenant>.<device>] groups``); a device passes
    #: when it is in ``devices`` or in one of these groups.
    groups: frozenset[str] | None = None

    def matches(self, tenant: str, device: str, metric: str) -> bool:
        return (
            (self.tenant is None or self.tenant == tenant)
            and (self.devices is None or device in self.devices)
            and (self.metrics is None or metric in self.metrics)
        )

    def selects(
        self, tenant: str, device: str, metrics: Collection[str], groups: Collection[str] = ()
    ) -> bool:
        """:meth:`matches` for an event with several metrics (any requested one
        will do) and a device in ``groups``."""
        if self.tenant is not None and self.tenant != tenant:
            return False
        if self.devices is not None or self.groups is not None:
            in_devices = self.devices is not None and device in self.devices
            if not in_devices and (self.groups is None or self.groups.isdisjoint(groups)):
                return False
        return self.metrics is None or not self.metrics.isdisjoint(metrics)

    def describe(self) -> dict[str, Any]:
        """The filters as JSON data, lists sorted, for acknowledgements."""
        described = {
            "tenant": self.tenant,
            "devices": None if self.devices is None else sorted(self.devices),
            "metrics": None if self.metrics is None else sorted(self.metrics),
        }
        if self.groups is not None:
            described["groups"] = sorted(self.groups)
        return described


def bounded_names(values: Iterable[str], what: str) -> frozenset[str]:
    """The distinct non-empty names, within the bounds on a filter."""
    return _names(values, what)


def _names(values: Iterable[str], what: str) -> frozenset[str]:
    names = frozenset(v for v in values if v)
    if len(names) > MAX_FILTER_ITEMS:
        raise FilterError(f"too many {what}: at most {MAX_FILTER_ITEMS}")
    too_long = [n for n in names if len(n) > MAX_NAME_LENGTH]
    if too_long:
        raise FilterError(f"{what} name longer than {MAX_NAME_LENGTH} characters")
    return names


def _query_list(query: Mapping[str, list[str]], key: str) -> frozenset[str] | None:
    """``?device=A,B&device=C`` -> {A, B, C}; absent or empty -> None (all)."""
    items = [item.strip() for value in query.get(key, []) for item in value.split(",")]
    names = _names(items, key + "s")
    return names or None


def initial_filters(
    *, is_admin: bool, own_tenant: str | None, query: Mapping[str, list[str]]
) -> Filters:
    """The filters of a new connection from its query parameters.

    A client sees its own tenant only (``?tenant=`` may repeat it); an admin
    sees every tenant, or the one named with ``?tenant=``.
    """
    asked = [t.strip() for t in query.get("tenant", []) if t.strip()]
    if len(set(asked)) > 1:
        raise FilterError("tenant may be given once")
    tenant = asked[0] if asked else None
    if not is_admin:
        if own_tenant is None or (tenant is not None and tenant != own_tenant):
            raise TenantForbidden(f"tenant {tenant or own_tenant!r} is not allowed for this token")
        tenant = own_tenant
    return Filters(tenant, _query_list(query, "device"), _query_list(query, "metric"))


# --------------------------------------------------------------------------- control messages
def _message(kind: str, **fields: Any) -> bytes:
    return _encode({"type": kind, **fields})


def connected_message(filters: Filters, role: str) -> bytes:
    return _message("connected", tenant=filters.tenant, role=role, filters=filters.describe())


def ping_message(now_ns: int) -> bytes:
    return _message("ping", ts=iso_utc(now_ns))


def lagged_message(dropped: int) -> bytes:
    return _message("lagged", dropped=dropped)


def error_message(text: str) -> bytes:
    return _message("error", message=text)


# --------------------------------------------------------------------------- actions
class _Action(msgspec.Struct, forbid_unknown_fields=True):
    pass


class _DeviceAction(_Action):
    device: str | None = None
    devices: list[str] | None = None

    def names(self) -> frozenset[str]:
        listed = [*([self.device] if self.device is not None else []), *(self.devices or [])]
        names = _names(listed, "devices")
        if not names:
            raise FilterError("give a device or a non-empty list of devices")
        return names


class _Subscribe(_DeviceAction):
    pass


class _Unsubscribe(_DeviceAction):
    pass


class _SetMetrics(_Action):
    metrics: list[str]


class _ClearFilters(_Action):
    pass


_ACTIONS: dict[str, type[_Action]] = {
    "subscribe": _Subscribe,
    "unsubscribe": _Unsubscribe,
    "set_metrics": _SetMetrics,
    "clear_filters": _ClearFilters,
}


def apply_action(filters: Filters, message: str | bytes) -> tuple[Filters, bytes]:
    """A client's JSON message -> its new filters and the reply to send.

    Anything wrong gives ``{"type": "error", "message": ...}`` and the filters
    unchanged; the connection stays open.  The tenant never changes here.
    """
    try:
        body = msgspec.json.decode(message)
    except msgspec.DecodeError as exc:
        return filters, error_message(f"invalid JSON: {exc}")
    except RecursionError:
        # msgspec recurses per nesting level and stops cleanly at Python's limit.
        return filters, error_message("invalid JSON: nested too deeply")
    if not isinstance(body, dict):
        return filters, error_message("expected a JSON object with an action")
    name = body.pop("action", None)
    kind = _ACTIONS.get(name) if isinstance(name, str) else None
    if kind is None:
        shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else repr(name[:80])
        return filters, error_message(
            f"unknown action {shown}: expected one of {', '.join(_ACTIONS)}"
        )
    try:
        action = msgspec.convert(body, kind)
        return _apply(filters, action)
    except (msgspec.ValidationError, FilterError) as exc:
        return filters, error_message(f"{name}: {exc}")


def _apply(filters: Filters, action: _Action) -> tuple[Filters, bytes]:
    if isinstance(action, _Subscribe):
        names = action.names()
        devices = _names((filters.devices or frozenset()) | names, "devices")
        new = Filters(filters.tenant, devices, filters.metrics)
        return new, _message("subscribed", devices=sorted(names), filters=new.describe())
    if isinstance(action, _Unsubscribe):
        names = action.names()
        if filters.devices is None:
            raise FilterError(
                "this connection receives every device; subscribe to devices to narrow it"
            )
        new = Filters(filters.tenant, filters.devices - names, filters.metrics)
        return new, _message("unsubscribed", devices=sorted(names), filters=new.describe())
    if isinstance(action, _SetMetrics):
        metrics = _names(action.metrics, "metrics") or None
        new = Filters(filters.tenant, filters.devices, metrics)
        return new, _message("metrics_updated", filters=new.describe())
    new = Filters(filters.tenant)
    return new, _message("filters_cleared", filters=new.describe())


# --------------------------------------------------------------------------- resume
@dataclass(frozen=True, slots=True)
class ReplayRange:
    """One partition to read again for a resuming client: from ``start`` (None:
    the partition's beginning) up to ``end`` exclusive (None: as far as it goes)."""

    topic: str
    partition: int
    start: int | None
    end: int | None


def replay_ranges(cursor: Positions, seam: Positions, topics: Iterable[str]) -> list[ReplayRange]:
    """What a client resuming from ``cursor`` missed, given the live stream's
    position ``seam`` at the moment the client was registered.

    Live events from then on have offsets at or past the seam, so reading each
    partition from the cursor up to the seam closes the gap with no overlap.
    A partition missing from the cursor appeared after the client's last event,
    so all of it is new; one missing from the seam has not been read live yet,
    so it is read to its end (the caller then skips live events below that).
    """
    ranges = []
    for topic in topics:
        seen, live = cursor.get(topic, {}), seam.get(topic, {})
        for partition in sorted(set(seen) | set(live)):
            start, end = seen.get(partition), live.get(partition)
            if start is not None and end is not None and start >= end:
                continue
            ranges.append(ReplayRange(topic, partition, start, end))
    return ranges
