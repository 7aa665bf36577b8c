"""The MQTT fast lane's framing and PUBLISH decoding.  Property blocks are
encoded by paho (``Properties.pack``), so the decoder is checked against a real
implementation of the MQTT 5 property format, not against itself."""

from __future__ import annotations

import contextlib
import itertools
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.io.mqtt_wire import Framer, InboundMessage, MalformedPacket, PahoSocket, puback
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


def test_paho_socket_serves_only_what_it_was_given() -> None:
    left, right = socket.socketpair()
    with left, right:
        wrapped = PahoSocket(left)
        with pytest.raises(BlockingIOError):
            wrapped.recv(1)
        wrapped.give(b"\x20\x02\x00\x00")
        assert wrapped.recv(1) == b"\x20"
        assert wrapped.recv(10) == b"\x02\x00\x00"
        assert not wrapped.has_data
        wrapped.send(b"out")  # writes go to the real socket
        assert right.recv(3) == b"out"
        assert wrapped.fileno() == left.fileno()


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


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=3000),
    sizes=st.lists(st.integers(1, 300), max_size=8),
    v5=st.booleans(),
)
def test_random_bytes_are_decoded_or_refused_never_anything_else(
    data: bytes, sizes: list[int], v5: bool
) -> None:
    """Whatever a broker (or something pretending to be one) sends, the framer
    either decodes it or raises MalformedPacket, the one refusal the client
    turns into a closed connection."""
    framer = Framer(v5=v5, max_payload=64)
    with contextlib.suppress(MalformedPacket):
        _feed_in_pieces(framer, data, sizes)
    assert framer.buffered <= framer.max_packet + 5


_OTHER_PACKETS = [b"\x20\x02\x00\x00", b"\x90\x03\x00\x01\x01", b"\xd0\x00", b"\x40\x02\x00\x09"]


@st.composite
def _streams(draw: st.DrawFn) -> tuple[bool, bytes, list[tuple[str, bytes, int, int]], bytes]:
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
        data += _publish_packet(topic, payload, qos, v5=v5, mid=mid)
        expected.append((topic, payload, qos, mid))
    return v5, data, expected, other


@settings(max_examples=100, deadline=None)
@given(stream=_streams(), sizes=st.lists(st.integers(1, 200), max_size=8))
def test_a_valid_stream_decodes_the_same_however_it_is_cut(
    stream: tuple[bool, bytes, list[tuple[str, bytes, int, int]], bytes], sizes: list[int]
) -> None:
    v5, data, expected, other = stream
    framer = Framer(v5=v5)
    messages, passed = _feed_in_pieces(framer, data, sizes)
    assert [(m.topic, m.payload, m.qos, m.mid) for m in messages] == expected
    assert passed == other
    assert framer.buffered == 0


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


def test_a_large_packet_in_many_reads_costs_linear_time() -> None:
    """A 16 MB packet arriving 4 KB at a time is joined once: copying what was
    held at every read took seconds (quadratic); this takes milliseconds."""
    framer = Framer(v5=False, max_payload=32 * 1024 * 1024)
    data = _publish_packet("a/b", b"q" * 16 * 1024 * 1024, 1, v5=False)
    started = time.process_time()
    messages, _ = _feed_in_pieces(framer, data, [4096])
    spent = time.process_time() - started
    assert len(messages) == 1 and len(messages[0].payload) == 16 * 1024 * 1024
    assert spent < 2.0, f"{spent:.1f} s of CPU"


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
