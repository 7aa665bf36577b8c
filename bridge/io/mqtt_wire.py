"""The fast lane of the MQTT receive path: framing and PUBLISH decoding.

paho reads each packet with at least three ``recv()`` calls (command byte,
each length byte, body), builds a ``Properties`` object for every MQTT 5
PUBLISH and a dict per packet, and writes every PUBACK with its own
``send()``.  Measured under load that was more than half of the bridge's CPU
per message (docs/benchmarks.md).  Here one ``recv()`` brings a whole burst,
:class:`Framer` cuts it into packets, decodes QoS 0 and 1 PUBLISH packets in
a few lines, and passes the bytes of every other packet (CONNACK, SUBACK,
PUBACK of our own publishes, PINGRESP, DISCONNECT, QoS 2 flows) on unchanged
to paho through :class:`PahoSocket`, so paho keeps the session's state
machine.  Nothing here touches a socket except PahoSocket's pass-through.
"""

from __future__ import annotations

import socket
from typing import Any

PUBLISH = 0x30
PUBACK_HEADER = b"\x40\x02"
USER_PROPERTY = 0x26


class MalformedPacket(ValueError):
    """The broker sent bytes that are not MQTT; the connection cannot go on."""


class InboundMessage:
    """One received PUBLISH: what the ingest path reads of it."""

    __slots__ = ("mid", "payload", "qos", "retain", "topic", "user_properties")

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        mid: int,
        user_properties: list[tuple[str, str]] | None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.mid = mid  # 0 at QoS 0
        self.user_properties = user_properties


# MQTT 5 properties a PUBLISH may carry, by how their value is encoded.
_FIXED_WIDTH = {0x01: 1, 0x23: 2, 0x02: 4}  # payload format, topic alias, expiry
_LENGTH_PREFIXED = frozenset({0x03, 0x08, 0x09})  # content type, response topic, correlation


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """A variable byte integer at ``pos``: (value, next position), or None when
    ``data`` ends before it does."""
    value = 0
    shift = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise MalformedPacket("variable byte integer longer than 4 bytes")
    return None


def _text(data: bytes, pos: int) -> tuple[str, int]:
    size = (data[pos] << 8) | data[pos + 1]
    pos += 2
    return data[pos : pos + size].decode("utf-8", "replace"), pos + size


def _user_properties(data: bytes, pos: int, end: int) -> list[tuple[str, str]] | None:
    """The user properties of a PUBLISH property block; the others are skipped."""
    found: list[tuple[str, str]] | None = None
    while pos < end:
        ident = data[pos]
        pos += 1
        if ident == USER_PROPERTY:
            name, pos = _text(data, pos)
            value, pos = _text(data, pos)
            if found is None:
                found = []
            found.append((name, value))
        elif ident in _FIXED_WIDTH:
            pos += _FIXED_WIDTH[ident]
        elif ident in _LENGTH_PREFIXED:
            pos += 2 + ((data[pos] << 8) | data[pos + 1])
        elif ident == 0x0B:  # subscription identifier
            decoded = _varint(data, pos, end)
            if decoded is None:
                raise MalformedPacket("truncated subscription identifier")
            pos = decoded[1]
        else:
            raise MalformedPacket(f"property 0x{ident:02x} is not allowed in PUBLISH")
    if pos != end:
        raise MalformedPacket("PUBLISH properties overrun their length")
    return found


class Framer:
    """Cuts the received byte stream into packets, keeping a partial one for
    the next call."""

    def __init__(self, *, v5: bool) -> None:
        self.v5 = v5
        self._rest = b""

    def feed(self, data: bytes) -> tuple[list[InboundMessage], bytes]:
        """Decode what ``data`` completes: the QoS 0/1 PUBLISH messages, and the
        bytes of every other complete packet, in order, for paho."""
        if self._rest:
            data = self._rest + data
        messages: list[InboundMessage] = []
        other = bytearray()
        end = len(data)
        pos = 0
        v5 = self.v5
        while pos < end:
            first = data[pos]
            length = _varint(data, pos + 1, end)
            if length is None:
                break
            size, body = length
            stop = body + size
            if stop > end:
                break
            qos = (first >> 1) & 3
            if first & 0xF0 != PUBLISH or qos == 2:
                other += data[pos:stop]
            else:
                messages.append(_publish(data, first, qos, body, stop, v5))
            pos = stop
        self._rest = data[pos:]
        return messages, bytes(other)


def _publish(data: bytes, first: int, qos: int, body: int, stop: int, v5: bool) -> InboundMessage:
    """Decode the PUBLISH packet whose body is ``data[body:stop]``."""
    try:
        topic_size = (data[body] << 8) | data[body + 1]
        cursor = body + 2 + topic_size
        topic = data[body + 2 : cursor].decode("utf-8", "replace")
        mid = 0
        if qos:
            mid = (data[cursor] << 8) | data[cursor + 1]
            cursor += 2
        user_properties = None
        if v5:
            props = _varint(data, cursor, stop)
            if props is None:
                raise MalformedPacket("PUBLISH without its property length")
            props_size, cursor = props
            if props_size:
                user_properties = _user_properties(data, cursor, cursor + props_size)
            cursor += props_size
    except IndexError:
        raise MalformedPacket("PUBLISH shorter than its header") from None
    if cursor > stop:
        raise MalformedPacket("PUBLISH header longer than the packet")
    return InboundMessage(topic, data[cursor:stop], qos, bool(first & 1), mid, user_properties)


def puback(mid: int) -> bytes:
    """A PUBACK for message id ``mid`` (success; the short MQTT 5 form)."""
    return PUBACK_HEADER + mid.to_bytes(2, "big")


class PahoSocket:
    """The socket paho is given: its writes and everything else go to the real
    socket, its reads are served only from the packets :class:`Framer` passed
    on, and raise ``BlockingIOError`` (paho's "nothing now") when there are
    none."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._incoming = bytearray()

    def give(self, data: bytes) -> None:
        self._incoming += data

    @property
    def has_data(self) -> bool:
        return bool(self._incoming)

    def recv(self, size: int) -> bytes:
        if not self._incoming:
            raise BlockingIOError
        chunk = bytes(self._incoming[:size])
        del self._incoming[:size]
        return chunk

    def pending(self) -> int:
        return len(self._incoming)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)
