"""The MQTT receive codec (bridge/core/mqtt_codec.py): framing, PUBLISH
decoding, the packet-size bound, topic aliases, linear work.  Property blocks
are encoded by paho (``Properties.pack``), so the decoder is checked against a
real implementation of the MQTT 5 property format, not against itself."""

from __future__ import annotations

import ast
import itertools
import tracemalloc
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.core import mqtt_codec
from bridge.core.mqtt_codec import Framer, InboundMessage, MalformedPacket, puback
from tests.support.flood import varint


def _publish_packet(
    topic: str,
    payload: bytes,
    qos: int,
    *,
    v5: bool,
    mid: int = 7,
    retain: bool = False,
    properties: Properties | None = None,
) -> bytes:
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name
    if qos:
        body += mid.to_bytes(2, "big")
    if v5:
        body += properties.pack() if properties is not None else b"\x00"
    body += payload
    return bytes([0x30 | qos << 1 | int(retain)]) + varint(len(body)) + body


def test_decodes_qos1_and_qos0_publish_of_mqtt_311() -> None:
    data = _publish_packet("tenant/t1/device/D1/telemetry", b'{"a":1}', 1, v5=False, mid=513)
    data += _publish_packet("x/y", b"", 0, v5=False, retain=True)
    messages, other = Framer(v5=False).feed(data)
    assert other == b""
    first, second = messages
    assert (first.topic, first.payload, first.qos, first.mid, first.retain) == (
        "tenant/t1/device/D1/telemetry",
        b'{"a":1}',
        1,
        513,
        False,
    )
    assert first.user_properties is None
    assert (second.topic, second.payload, second.qos, second.mid, second.retain) == (
        "x/y",
        b"",
        0,
        0,
        True,
    )


def test_mqtt5_user_properties_are_kept_and_other_properties_skipped() -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 60
    props.ContentType = "application/json"
    props.CorrelationData = b"\x00\x01"
    props.UserProperty = [("site", "north"), ("line", "2")]
    props.UserProperty = [("site", "south")]  # paho appends: a repeated name is allowed
    data = _publish_packet("a/b", b"x" * 300, 1, v5=True, properties=props)
    (message,), other = Framer(v5=True).feed(data)
    assert other == b""
    assert message.payload == b"x" * 300
    assert message.user_properties == [("site", "north"), ("line", "2"), ("site", "south")]


def test_mqtt5_publish_without_properties() -> None:
    (message,), _ = Framer(v5=True).feed(_publish_packet("a", b"p", 0, v5=True))
    assert (message.topic, message.payload, message.user_properties) == ("a", b"p", None)


def test_a_packet_split_anywhere_is_decoded_once_complete() -> None:
    packet = _publish_packet("tenant/t1/device/D1/telemetry", b"y" * 200, 1, v5=True)
    stream = packet * 3
    for cut in range(1, len(stream)):
        framer = Framer(v5=True)
        first, _ = framer.feed(stream[:cut])
        rest, _ = framer.feed(stream[cut:])
        assert len(first) + len(rest) == 3
        assert all(m.payload == b"y" * 200 for m in first + rest)


def test_every_other_packet_goes_to_paho_in_order() -> None:
    connack = b"\x20\x02\x00\x00"
    suback = b"\x90\x03\x00\x01\x01"
    pingresp = b"\xd0\x00"
    qos2 = _publish_packet("q/2", b"two", 2, v5=False)
    data = connack + _publish_packet("a", b"1", 1, v5=False) + suback + qos2 + pingresp
    messages, other = Framer(v5=False).feed(data)
    assert [m.payload for m in messages] == [b"1"]
    assert other == connack + suback + qos2 + pingresp


@pytest.mark.parametrize(
    "body",
    [
        b"\x00",  # shorter than the topic length
        b"\x00\x05ab",  # topic longer than the packet
        b"\x00\x01a\x00\x01\x02\x7f\x00",  # v5 property 0x7f does not exist
    ],
)
def test_malformed_publish_is_refused(body: bytes) -> None:
    packet = bytes([0x32, len(body)]) + body
    with pytest.raises(MalformedPacket):
        Framer(v5=True).feed(packet)


def test_overlong_remaining_length_is_refused() -> None:
    with pytest.raises(MalformedPacket):
        Framer(v5=False).feed(b"\x30\xff\xff\xff\xff\x01")


def test_puback_bytes() -> None:
    assert puback(0x1234) == b"\x40\x02\x12\x34"


def _feed_in_pieces(
    framer: Framer, data: bytes, sizes: list[int]
) -> tuple[list[InboundMessage], bytes]:
    """Feed ``data`` cut into pieces of ``sizes`` (cycled), as reads would bring it."""
    messages: list[InboundMessage] = []
    other = b""
    pos = 0
    for size in itertools.cycle(sizes or [len(data) or 1]):
        if pos >= len(data):
            return messages, other
        got, passed = framer.feed(data[pos : pos + size])
        messages += got
        other += passed
        pos += size
    raise AssertionError("unreachable")


#: Bounds a hang, not a speed: one example takes milliseconds.
DEADLINE = timedelta(seconds=10)

Decoded = tuple[str, bytes, int, bool, int, list[tuple[str, str]] | None]


def _fields(message: InboundMessage) -> Decoded:
    return (
        message.topic,
        message.payload,
        message.qos,
        message.retain,
        message.mid,
        message.user_properties,
    )


_OTHER_PACKETS = [b"\x20\x02\x00\x00", b"\x90\x03\x00\x01\x01", b"\xd0\x00", b"\x40\x02\x00\x09"]


@st.composite
def _properties(draw: st.DrawFn) -> tuple[Properties | None, list[tuple[str, str]] | None]:
    """An MQTT 5 PUBLISH property block as paho encodes it, and the user
    properties the decoder must find in it."""
    if draw(st.booleans()):
        return None, None
    props = Properties(PacketTypes.PUBLISH)
    if draw(st.booleans()):
        props.MessageExpiryInterval = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        props.ContentType = draw(st.text(max_size=20))
    if draw(st.booleans()):
        props.CorrelationData = draw(st.binary(max_size=20))
    text = st.text(max_size=12)
    user = draw(st.lists(st.tuples(text, text), max_size=3))
    if user:
        props.UserProperty = user
    return props, user or None


@st.composite
def _streams(draw: st.DrawFn) -> tuple[bool, bytes, list[Decoded], bytes]:
    """A valid stream of packets: (v5, bytes, the PUBLISH messages, the rest)."""
    v5 = draw(st.booleans())
    data, expected, other = b"", [], b""
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.integers(0, 4)) == 0:
            packet = draw(st.sampled_from(_OTHER_PACKETS))
            data, other = data + packet, other + packet
            continue
        topic = draw(st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t))
        payload = draw(st.binary(max_size=400))
        qos = draw(st.integers(0, 1))
        mid = draw(st.integers(1, 65_535)) if qos else 0
        retain = draw(st.booleans())
        props, user = draw(_properties()) if v5 else (None, None)
        data += _publish_packet(
            topic, payload, qos, v5=v5, mid=mid, retain=retain, properties=props
        )
        expected.append((topic, payload, qos, retain, mid, user))
    return v5, data, expected, other


@settings(max_examples=200, deadline=DEADLINE)
@given(stream=_streams(), sizes=st.lists(st.integers(1, 200), max_size=8))
def test_encoded_publishes_decode_to_what_was_encoded_however_they_are_cut(
    stream: tuple[bool, bytes, list[Decoded], bytes], sizes: list[int]
) -> None:
    """The round trip: topic, payload, QoS, retain, packet id and user
    properties come back as encoded, the other packets pass on byte for
    byte, and nothing is left held."""
    v5, data, expected, other = stream
    framer = Framer(v5=v5)
    messages, passed = _feed_in_pieces(framer, data, sizes)
    assert [_fields(m) for m in messages] == expected
    assert passed == other
    assert framer.buffered == 0


# Remaining lengths each side of where their encoding grows (1, 2, 3 bytes),
# and property blocks of a one- and a two-byte length, whole and with the
# read cut inside each header.
@pytest.mark.parametrize("size", [8, 126, 127, 128, 129, 16_382, 16_383, 16_384, 16_385, 70_000])
@pytest.mark.parametrize("value", [0, 118, 119])
def test_lengths_at_every_encoding_boundary_decode_whole_and_cut_in_the_header(
    size: int, value: int
) -> None:
    props = Properties(PacketTypes.PUBLISH)
    if value:  # a block of 1 + 2 + 4 + 2 + value bytes: 127 (one-byte length) or 128 (two)
        props.UserProperty = [("name", "v" * value)]
    block = len(props.pack()) if value else 1
    header = 2 + len("t/x") + 2 + block
    payload = b"p" * max(0, size - header)
    packet = _publish_packet("t/x", payload, 1, v5=True, mid=9, properties=props if value else None)
    data = b"\xd0\x00" + packet + b"\xd0\x00"
    expected = [("t/x", payload, 1, False, 9, [("name", "v" * value)] if value else None)]
    for cut in (len(data), 3, 4, 5, 3 + header):
        framer = Framer(v5=True, max_payload=100_000)
        got = [framer.feed(data[:cut]), framer.feed(data[cut:])]
        assert [_fields(m) for m in got[0][0] + got[1][0]] == expected, cut
        assert got[0][1] + got[1][1] == b"\xd0\x00\xd0\x00"
        assert framer.buffered == 0


@st.composite
def _hostile_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, or a valid stream with a few bytes overwritten and maybe
    its end cut off: random bytes alone rarely get past the first header."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=3000))
    _, data, _, _ = draw(_streams())
    mutated = bytearray(data)
    for _ in range(draw(st.integers(0, 4)) if mutated else 0):
        mutated[draw(st.integers(0, len(mutated) - 1))] = draw(st.integers(0, 255))
    return bytes(mutated[: draw(st.integers(0, len(mutated)))])


Outcome = tuple[list[Decoded], bytes, int] | None


def _outcome(framer: Framer, data: bytes, sizes: list[int]) -> Outcome:
    """What the framer makes of ``data`` fed in pieces: the messages, the bytes
    passed on and the bytes held, or None when it refused the stream."""
    try:
        messages, other = _feed_in_pieces(framer, data, sizes)
    except MalformedPacket:
        return None  # the connection ends: what the framer holds goes with it
    assert framer.buffered <= framer.max_packet + 5
    return [_fields(m) for m in messages], other, framer.buffered


@settings(max_examples=200, deadline=DEADLINE)
@given(
    data=_hostile_bytes(),
    sizes=st.lists(st.integers(1, 300), max_size=8),
    v5=st.booleans(),
    bound=st.sampled_from([None, 40]),
)
def test_any_bytes_decode_as_they_would_fed_whole_or_are_refused(
    data: bytes, sizes: list[int], v5: bool, bound: int | None
) -> None:
    """Whatever a broker (or something pretending to be one) sends, the framer
    either decodes it, the same however it is cut into reads, or raises
    MalformedPacket, the one refusal the client turns into a closed
    connection; never another exception.  A bound of 40 bytes (far below
    HEADER_ROOM, so set on the framer directly) takes the oversized-PUBLISH
    path."""

    def framer() -> Framer:
        made = Framer(v5=v5, max_payload=64)
        if bound is not None:
            made.max_packet = bound
        return made

    assert _outcome(framer(), data, sizes) == _outcome(framer(), data, [])


def test_an_oversized_publish_is_cut_not_buffered_and_the_stream_goes_on() -> None:
    framer = Framer(v5=True, max_payload=1000)
    big = _publish_packet("tenant/t1/device/BIG/telemetry", b"z" * 2_000_000, 1, v5=True, mid=77)
    after = _publish_packet("tenant/t1/device/D1/telemetry", b'{"ok":1}', 1, v5=True, mid=78)
    held = 0
    messages: list[InboundMessage] = []
    data = big + after + b"\xd0\x00"
    for pos in range(0, len(data), 7000):
        got, _ = framer.feed(data[pos : pos + 7000])
        messages += got
        held = max(held, framer.buffered)
    oversized, normal = messages
    assert (oversized.topic, oversized.mid) == ("tenant/t1/device/BIG/telemetry", 77)
    # Still over the limit: the normalizer refuses it as payload_too_large.
    assert 1000 < len(oversized.payload) <= framer.max_packet
    assert (normal.payload, normal.mid) == (b'{"ok":1}', 78)
    assert held <= framer.max_packet + 7000


def test_an_oversized_packet_other_than_publish_is_refused() -> None:
    framer = Framer(v5=False, max_payload=10)
    with pytest.raises(MalformedPacket, match="more than the"):
        framer.feed(b"\x90" + varint(framer.max_packet + 1))


def test_a_new_bound_holds_from_the_next_packet() -> None:
    """A reload that raises limits.max_payload_bytes: the next large PUBLISH
    arrives whole, not cut at the old bound (which the new normalizer would
    take for the whole payload)."""
    framer = Framer(v5=False, max_payload=1000)
    big = _publish_packet("a/b", b"q" * 500_000, 1, v5=False)
    (cut,), _ = _feed_in_pieces(framer, big, [65536])
    assert len(cut.payload) < 500_000
    framer.set_max_payload(1_000_000)
    (whole,), _ = _feed_in_pieces(framer, big, [65536])
    assert whole.payload == b"q" * 500_000
    framer.set_max_payload(1000)
    (cut,), _ = _feed_in_pieces(framer, big, [65536])
    assert len(cut.payload) < 500_000


def _with_topic_alias(alias: int) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.TopicAlias = alias
    return props


@pytest.mark.parametrize("topic", ["tenant/t1/device/D1/telemetry", ""])
def test_a_topic_alias_is_a_named_protocol_error(topic: str) -> None:
    """The bridge's CONNECT leaves Topic Alias Maximum at 0, so a broker must
    send no alias: one that does is refused by name, whether the PUBLISH sets
    the alias (with its topic) or uses it (empty topic), never decoded under
    an empty or a stale topic."""
    packet = _publish_packet(topic, b"{}", 1, v5=True, properties=_with_topic_alias(3))
    with pytest.raises(MalformedPacket, match="topic alias 3 in a PUBLISH: the bridge accepts"):
        Framer(v5=True).feed(packet)


def test_a_topic_alias_in_an_oversized_publish_is_refused_too() -> None:
    framer = Framer(v5=True, max_payload=1000)
    big = _publish_packet("", b"z" * 2_000_000, 1, v5=True, properties=_with_topic_alias(1))
    with pytest.raises(MalformedPacket, match="topic alias 1"):
        _feed_in_pieces(framer, big, [65536])


def test_an_empty_topic_without_alias_is_decoded_as_it_is() -> None:
    """No mapping matches the empty topic; refusing the connection for it
    would make the broker send it again at every reconnect."""
    for v5 in (False, True):
        (message,), _ = Framer(v5=v5).feed(_publish_packet("", b"x", 1, v5=v5, mid=5))
        assert (message.topic, message.payload, message.mid) == ("", b"x", 5)


def test_the_codec_is_pure() -> None:
    """No socket, no paho, no clock: only the standard library's
    ``__future__`` is imported, so the codec is fed bytes and nothing else."""
    # The source beside the module (which may be its compiled extension, setup.py).
    tree = ast.parse(Path(mqtt_codec.__file__).with_name("mqtt_codec.py").read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported == {"__future__"}


#: What feeding may allocate: a few times each byte (the join of a complete
#: packet, its payload), and per call its reply and, in ``bytes.join``, a
#: buffer record for each piece held (about 110 bytes per call measured).
PER_BYTE, PER_CALL = 4, 200


def _allocated_while_fed(framer: Framer, data: bytes, size: int) -> tuple[int, int, int]:
    """Feed ``data`` in pieces of ``size`` bytes and add up, over the calls,
    the memory each one allocated beyond what was held before it (its peak):
    a copy of what is held counts in full, whatever the machine's speed.
    Stops early once that passes the linear budget by a megabyte, so that a
    quadratic framer fails in a second.  Returns (bytes allocated, calls,
    messages decoded)."""
    allocated = calls = decoded = 0
    tracemalloc.start()
    try:
        for pos in range(0, len(data), size):
            piece = data[pos : pos + size]
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            messages, _ = framer.feed(piece)
            allocated += tracemalloc.get_traced_memory()[1] - before
            calls += 1
            decoded += len(messages)
            if allocated > PER_BYTE * (pos + size) + PER_CALL * calls + 1_000_000:
                break
    finally:
        tracemalloc.stop()
    return allocated, calls, decoded


@pytest.mark.parametrize(
    ("payloads", "size"),
    [
        # A burst one byte at a time: 81 messages with a large one among them.
        ([b"s" * 200] * 40 + [b"L" * 20_000] + [b"s" * 200] * 40, 1),
        # A 4 MB payload in 4 KB reads (quadratic joining took seconds here).
        ([b"q" * 4 * 1024 * 1024], 4096),
    ],
    ids=["burst-in-1-byte-reads", "4MB-in-4KB-reads"],
)
def test_work_is_linear_in_the_bytes_received(payloads: list[bytes], size: int) -> None:
    """Each byte is copied a bounded number of times however the stream is
    cut: the memory allocated while feeding stays within a linear budget,
    where joining what is held again at every read would allocate about half
    the square of the packet size (200 MB for the 20 KB packet in one-byte
    reads)."""
    data = b"".join(
        _publish_packet("tenant/t1/device/D1/telemetry", p, 1, v5=True, mid=i + 1)
        for i, p in enumerate(payloads)
    )
    framer = Framer(v5=True, max_payload=5 * 1024 * 1024)
    allocated, calls, decoded = _allocated_while_fed(framer, data, size)
    assert decoded == len(payloads)
    assert allocated <= PER_BYTE * len(data) + PER_CALL * calls
