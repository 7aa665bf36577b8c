"""The MQTT receive codec: framing, PUBLISH decoding, the PUBACK encoder.

Pure: bytes in, messages and bytes out; no socket, no paho, no clock, so every
rule of the wire format is unit-tested without a broker
(tests/unit/test_mqtt_codec.py).  The MQTT client
(:mod:`bridge.io.mqtt`) reads a whole burst with one ``recv()``, and
:class:`Framer` cuts it into packets: QoS 0 and 1 PUBLISH packets are decoded
here, the bytes of every other packet (CONNACK, SUBACK, UNSUBACK, PUBACK of our
own publishes, PINGRESP, DISCONNECT, the QoS 2 flows) are handed on unchanged,
in order, to paho through :mod:`bridge.io.paho_splice`, so paho keeps the
session's state machine.  Why not let paho read everything: it reads each
packet with at least three ``recv()`` calls and builds a ``Properties`` object
and a dict per MQTT 5 PUBLISH, which was more than half of the bridge's CPU per
message (docs/benchmarks.md).

Bounds: a packet may be at most the mapping's largest payload
(``limits.max_payload_bytes``) plus :data:`HEADER_ROOM`; see :class:`Framer`
for what happens to a larger PUBLISH and to any other larger packet.

Topic aliases (MQTT 5): the bridge accepts none.  Its CONNECT carries no Topic
Alias Maximum property, which MQTT 5 (3.1.2.11.8) reads as 0: the broker must
not send a Topic Alias.  A PUBLISH that carries one anyway is refused with
:class:`MalformedPacket` ("topic alias ... the bridge accepts none"), which
ends the connection (MQTT 5 makes it a protocol error, DISCONNECT reason 0x94),
rather than being decoded under an empty or a stale topic: a message whose
topic travelled as an alias would otherwise match no mapping, or the wrong
one.  A PUBLISH with an empty topic and no alias is decoded as it is (topic
``""``, which no mapping matches): a broker that lets a client publish one is
not this connection's fault, and refusing it would make the broker send it
again at every reconnect.
"""

from __future__ import annotations

PUBLISH = 0x30
PUBACK_HEADER = b"\x40\x02"
USER_PROPERTY = 0x26
TOPIC_ALIAS = 0x23

#: Room for what precedes the payload in a PUBLISH: a topic of up to 65,535
#: bytes with its length, the packet id and MQTT 5 properties.
HEADER_ROOM = 256 * 1024


class MalformedPacket(ValueError):
    """The broker sent bytes that are not MQTT, or MQTT this connection
    forbids (a topic alias); the connection cannot go on."""


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


# MQTT 5 properties a PUBLISH may carry and the bridge skips, by how their
# value is encoded (the topic alias and user properties are handled apart).
_FIXED_WIDTH = {0x01: 1, 0x02: 4}  # payload format indicator, message expiry
_LENGTH_PREFIXED = frozenset({0x03, 0x08, 0x09})  # content type, response topic, correlation
_SUBSCRIPTION_IDENTIFIER = 0x0B


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


def _refused(ident: int, data: bytes, pos: int) -> MalformedPacket:
    """Why property ``ident`` (its value at ``pos``) ends the connection.  Kept
    out of the loop of :func:`_properties`: one more branch there, even one
    never taken, cost about 230 instructions per PUBLISH with two user
    properties (CPython 3.11, callgrind), about 0.5 % of the client's receive
    and acknowledgement path."""
    if ident == TOPIC_ALIAS:
        alias = (data[pos] << 8) | data[pos + 1]
        return MalformedPacket(
            f"topic alias {alias} in a PUBLISH: the bridge accepts none "
            "(its CONNECT leaves Topic Alias Maximum at 0)"
        )
    return MalformedPacket(f"property 0x{ident:02x} is not allowed in PUBLISH")


def _properties(data: bytes, pos: int, end: int) -> list[tuple[str, str]] | None:
    """The user properties of the PUBLISH property block ``data[pos:end]``;
    the other allowed properties are skipped, any other is refused (a topic
    alias by name).  May raise IndexError when the block runs past ``data``
    (the caller's MalformedPacket)."""
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
        elif ident == _SUBSCRIPTION_IDENTIFIER:
            decoded = _varint(data, pos, end)
            if decoded is None:
                raise MalformedPacket("truncated subscription identifier")
            pos = decoded[1]
        else:
            raise _refused(ident, data, pos)
    if pos != end:
        raise MalformedPacket("PUBLISH properties overrun their length")
    return found


class Framer:
    """Cuts the received byte stream into packets, keeping a partial one for
    the next call.

    Memory is bounded: a packet may be at most ``max_payload`` plus
    :data:`HEADER_ROOM` bytes.  A larger PUBLISH is not buffered whole: it is
    decoded from its first bytes, its payload cut there (still larger than
    ``max_payload``, so the normalizer refuses it as ``payload_too_large`` and
    it is acknowledged like any dead letter; refusing the connection instead
    would make the broker deliver it again at every reconnect), and the rest of
    it is skipped as it arrives.  Any other packet that large is refused
    (:class:`MalformedPacket`): no broker sends one.

    Work is linear in the bytes received: a packet arriving in many reads is
    joined once, when it is complete, not copied again at every read (the
    pieces wait in a list until then); each byte is copied a bounded number of
    times however the stream is cut (tests/unit/test_mqtt_codec.py counts the
    bytes allocated for a burst fed one byte at a time).
    """

    def __init__(self, *, v5: bool, max_payload: int = 65_536) -> None:
        self.v5 = v5
        self.max_packet = 0
        self.set_max_payload(max_payload)
        self._rest = b""  # the start of an incomplete packet
        self._more: list[bytes] = []  # bytes received after _rest, not joined yet
        self._have = 0  # len(_rest) plus the sizes in _more
        self._need = 0  # _have must reach this before decoding is tried again
        self._skip = 0  # bytes still to discard of an oversized PUBLISH
        self._skipped: InboundMessage | None = None  # handed on once they are

    def set_max_payload(self, max_payload: int) -> None:
        """A new bound (a reload).  It holds from the next decode on, for a
        packet partly received too; the rest of a PUBLISH already cut at the
        old bound is still skipped to its end."""
        self.max_packet = max_payload + HEADER_ROOM

    @property
    def buffered(self) -> int:
        """Bytes held of an incomplete packet (never more than a packet may be)."""
        return self._have

    def feed(self, data: bytes) -> tuple[list[InboundMessage], bytes]:
        """Decode what ``data`` completes: the QoS 0/1 PUBLISH messages, and the
        bytes of every other complete packet, in order, for paho."""
        messages: list[InboundMessage] = []
        if self._skip:
            if len(data) < self._skip:
                self._skip -= len(data)
                return messages, b""
            data = data[self._skip :]
            self._skip = 0
            assert self._skipped is not None
            messages.append(self._skipped)
            self._skipped = None
        if self._have:
            self._have += len(data)
            if self._have < self._need:
                self._more.append(data)
                return messages, b""
            data = b"".join([self._rest, *self._more, data])
            self._more.clear()
        other = bytearray()
        pos, need = self._cut(data, messages, other)
        self._rest = data[pos:]
        self._have = len(self._rest)
        self._need = need
        return messages, bytes(other)

    def _cut(
        self, data: bytes, messages: list[InboundMessage], other: bytearray
    ) -> tuple[int, int]:
        """Decode the complete packets of ``data``; returns where the incomplete
        rest starts and how many bytes it needs before it is worth a look."""
        end = len(data)
        pos = 0
        v5 = self.v5
        max_packet = self.max_packet
        while pos < end:
            first = data[pos]
            length = _varint(data, pos + 1, end)
            if length is None:
                return pos, end - pos + 1
            size, body = length
            stop = body + size
            kind = first & 0xF0
            qos = (first >> 1) & 3
            if size > max_packet:
                if kind != PUBLISH or qos > 1:
                    raise MalformedPacket(
                        f"a packet of {size} bytes, more than the {max_packet} accepted"
                    )
                kept = body + max_packet
                if kept > end:
                    return pos, kept - pos
                message = _oversized_publish(data, first, qos, body, kept, v5)
                if stop > end:
                    self._skip, self._skipped = stop - end, message
                    return end, 0
                messages.append(message)
            elif stop > end:
                return pos, stop - pos
            elif kind != PUBLISH or qos == 2:
                other += data[pos:stop]
            elif qos == 3:
                raise MalformedPacket("PUBLISH with QoS 3")
            else:
                messages.append(_publish(data, first, qos, body, stop, v5))
            pos = stop
        return pos, 0


def _topic_and_mid(data: bytes, qos: int, body: int) -> tuple[str, int, int]:
    """The topic and packet id (0 at QoS 0) at the start of a PUBLISH body,
    and where what follows them starts."""
    cursor = body + 2 + ((data[body] << 8) | data[body + 1])
    topic = data[body + 2 : cursor].decode("utf-8", "replace")
    mid = 0
    if qos:
        mid = (data[cursor] << 8) | data[cursor + 1]
        cursor += 2
    return topic, mid, cursor


def _publish(data: bytes, first: int, qos: int, body: int, stop: int, v5: bool) -> InboundMessage:
    """Decode the PUBLISH packet whose body is ``data[body:stop]``."""
    try:
        topic, mid, cursor = _topic_and_mid(data, qos, body)
        user_properties = None
        if v5:
            props = _varint(data, cursor, stop)
            if props is None:
                raise MalformedPacket("PUBLISH without its property length")
            props_size, cursor = props
            if props_size:
                user_properties = _properties(data, cursor, cursor + props_size)
            cursor += props_size
    except IndexError:
        raise MalformedPacket("PUBLISH shorter than its header") from None
    if cursor > stop:
        raise MalformedPacket("PUBLISH header longer than the packet")
    return InboundMessage(topic, data[cursor:stop], qos, bool(first & 1), mid, user_properties)


def _oversized_publish(
    data: bytes, first: int, qos: int, body: int, kept: int, v5: bool
) -> InboundMessage:
    """A PUBLISH larger than the framer accepts, from its first bytes
    ``data[body:kept]``: topic and packet id; the rest of what was kept stands
    for the payload (MQTT 5 properties included).  The property block, when it
    lies within what was kept, is still checked, so that a topic alias is
    refused here as in any PUBLISH."""
    try:
        topic, mid, cursor = _topic_and_mid(data, qos, body)
        if cursor > kept:  # only with a bound below HEADER_ROOM (the tests')
            raise MalformedPacket("PUBLISH header longer than the bytes kept of it")
        if v5:
            props = _varint(data, cursor, kept)
            if props is not None and props[1] + props[0] <= kept:
                _properties(data, props[1], props[1] + props[0])
    except IndexError:
        raise MalformedPacket("PUBLISH shorter than its header") from None
    return InboundMessage(topic, data[cursor:kept], qos, bool(first & 1), mid, None)


def puback(mid: int) -> bytes:
    """A PUBACK for message id ``mid`` (success; the short MQTT 5 form, which
    is also the whole MQTT 3.1.1 PUBACK)."""
    return PUBACK_HEADER + mid.to_bytes(2, "big")
