"""The tests' own Sparkplug B encoder: protobuf wire format written by hand from
the field numbers of sparkplug_b.proto, so the bridge's decoder (the protobuf
package and the generated module) is checked against an independent writer.

Value fields by datatype follow Eclipse Tahu: Int8..Int32, UInt8, UInt16 in
``int_value`` (negative numbers as 32-bit two's complement); UInt32, Int64,
UInt64, DateTime in ``long_value`` (64-bit two's complement).
"""

from __future__ import annotations

import struct

# DataType numbers of sparkplug_b.proto.
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT, UUID = 9, 10, 11, 12, 13, 14, 15
DATASET, BYTES, FILE, TEMPLATE = 16, 17, 18, 19
INT32_ARRAY = 24

_INT_VALUE = {INT8, INT16, INT32, UINT8, UINT16}
_LONG_VALUE = {UINT32, INT64, UINT64, DATETIME}
_STRING = {STRING, TEXT, UUID}


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def _uint(field: int, n: int) -> bytes:
    return _key(field, 0) + varint(n)


def _len(field: int, data: bytes) -> bytes:
    return _key(field, 2) + varint(len(data)) + data


def metric(
    name: str | bytes | None = None,
    *,
    alias: int | None = None,
    datatype: int | None = None,
    value: object = None,
    timestamp: int | None = None,
    is_null: bool = False,
) -> bytes:
    """One Payload.Metric, its value in the field its datatype uses.  A name
    or string value given as bytes is written as is (not UTF-8, say)."""
    out = b""
    if name is not None:
        out += _len(1, name if isinstance(name, bytes) else name.encode())
    if alias is not None:
        out += _uint(2, alias)
    if timestamp is not None:
        out += _uint(3, timestamp)
    if datatype is not None:
        out += _uint(4, datatype)
    if is_null:
        out += _uint(7, 1)
        return out
    if value is None:
        return out
    if datatype in _INT_VALUE:
        assert isinstance(value, int)
        out += _uint(10, value & 0xFFFFFFFF)
    elif datatype in _LONG_VALUE:
        assert isinstance(value, int)
        out += _uint(11, value & 0xFFFFFFFFFFFFFFFF)
    elif datatype == FLOAT:
        assert isinstance(value, float)
        out += _key(12, 5) + struct.pack("<f", value)
    elif datatype == DOUBLE:
        assert isinstance(value, float)
        out += _key(13, 1) + struct.pack("<d", value)
    elif datatype == BOOLEAN:
        out += _uint(14, 1 if value else 0)
    elif datatype in _STRING:
        assert isinstance(value, str | bytes)
        out += _len(15, value if isinstance(value, bytes) else value.encode())
    elif datatype in (BYTES, FILE):
        assert isinstance(value, bytes)
        out += _len(16, value)
    elif datatype == DATASET:
        out += _len(17, _uint(1, 0))
    elif datatype == TEMPLATE:
        out += _len(18, _len(1, b"v1"))
    else:
        raise ValueError(f"the test encoder has no value field for datatype {datatype}")
    return out


def payload(metrics: list[bytes], *, seq: int | None = None, timestamp: int | None = None) -> bytes:
    """A Payload: timestamp (1), metrics (2), seq (3)."""
    out = b""
    if timestamp is not None:
        out += _uint(1, timestamp)
    for m in metrics:
        out += _len(2, m)
    if seq is not None:
        out += _uint(3, seq)
    return out


def read_metrics(data: bytes) -> list[dict[str, object]]:
    """The metrics of a Payload as {field number: value}, enough to check what
    the bridge publishes (a rebirth NCMD): a minimal reader of the wire format."""
    fields = _fields(data)
    return [dict(_fields(m)) for n, m in fields if n == 2 and isinstance(m, bytes)]


def _fields(data: bytes) -> list[tuple[int, object]]:
    out: list[tuple[int, object]] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            out.append((field, value))
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            out.append((field, data[pos : pos + size]))
            pos += size
        elif wire == 5:
            out.append((field, data[pos : pos + 4]))
            pos += 4
        elif wire == 1:
            out.append((field, data[pos : pos + 8]))
            pos += 8
        else:
            raise ValueError(f"wire type {wire}")
    return out


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def node_birth(
    metrics: list[bytes], *, seq: int = 0, bd_seq: int = 0, timestamp: int | None = None
) -> bytes:
    """An NBIRTH: bdSeq and Node Control/Rebirth first, as Tahu sends them."""
    head = [
        metric("bdSeq", datatype=INT64, value=bd_seq),
        metric("Node Control/Rebirth", datatype=BOOLEAN, value=False),
    ]
    return payload(head + metrics, seq=seq, timestamp=timestamp)


def node_death(bd_seq: int, timestamp: int | None = None) -> bytes:
    return payload([metric("bdSeq", datatype=INT64, value=bd_seq)], timestamp=timestamp)
