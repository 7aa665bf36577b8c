"""The MQTT fast lane's framing and PUBLISH decoding.  Property blocks are
encoded by paho (``Properties.pack``), so the decoder is checked against a real
implementation of the MQTT 5 property format, not against itself."""

from __future__ import annotations

import socket

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.io.mqtt_wire import Framer, MalformedPacket, PahoSocket, puback
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
