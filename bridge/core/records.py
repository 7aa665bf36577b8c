"""What the core hands to Kafka: clean records, dead letters, alarms, and the
framing (topic, key, value, headers) of one outgoing Kafka record.

The JSON field order of these Structs is the order on the wire, so a consumer
reading the topic sees ``tenant``, ``device_serial_id``, ``metric`` ... first.
"""

from __future__ import annotations

from typing import Literal

import msgspec

MetricType = Literal["numeric", "bool", "str"]
Value = int | float | bool | str
EventKind = Literal["online", "offline"]


class CleanRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One metric of one valid message, on the clean topic."""

    tenant: str
    device_serial_id: str
    metric: str
    metric_type: MetricType
    value: Value
    unit: str | None = None
    ts: str
    received_at: str
    schema_version: int
    event_id: str | None = None
    quality: str | None = None


class DeadLetter(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Why a message, or one metric of it, was refused, with the original bytes.

    ``payload`` is the payload as UTF-8 text, or base64 with
    ``payload_encoding = "base64"`` when it is not valid UTF-8.
    """

    reason: str
    detail: str
    mqtt_topic: str
    mapping: str | None = None
    metric: str | None = None
    payload: str
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    received_at: str


class AlarmRecord(msgspec.Struct, kw_only=True):
    """A threshold crossing: one record when it is raised and one when it clears."""

    tenant: str
    device_serial_id: str
    metric: str
    value: Value
    threshold: float | list[float]
    kind: str
    ts: str
    state: Literal["raised", "cleared"]


class DeviceEvent(msgspec.Struct, kw_only=True):
    """A device or Sparkplug edge node going online (birth) or offline (death),
    on the mapping's events topic."""

    tenant: str
    device_serial_id: str
    event: EventKind
    ts: str


Headers = list[tuple[str, bytes]]


class Outgoing(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One Kafka record to produce, and the form the disk spool stores
    (msgpack, as an array: no field names in every frame)."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers = msgspec.field(default_factory=list)
