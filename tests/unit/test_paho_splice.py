"""The splice between the bridge's MQTT fast lane and paho
(bridge/io/paho_splice.py), with a real paho client on a real loopback
connection: no broker, the test reads what a broker would.

The paho client is the one :class:`MqttClient` builds and connects (write
hook, in-flight window, MQTT 5 CONNECT properties), so what reaches the wire is
what the bridge sends."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.core.mqtt_codec import puback
from bridge.core.settings import MqttSettings
from bridge.io.mqtt import MqttClient
from bridge.io.mqtt_keepalive import PINGREQ
from bridge.io.paho_splice import PahoSplice

Packet = tuple[object, ...]

#: Socket buffers this small fill with one command publish, so both sides'
#: packets are cut by a full socket again and again.
BUFFER = 4096


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _text(data: bytes, pos: int) -> tuple[str, int]:
    size = int.from_bytes(data[pos : pos + 2], "big")
    return data[pos + 2 : pos + 2 + size].decode(), pos + 2 + size


def _decode(first: int, body: bytes) -> Packet:
    """One client-to-broker MQTT 5 packet, decoded as far as the test compares
    it; anything but a whole packet of a kind the bridge sends fails."""
    kind = first >> 4
    if kind == 1:
        return ("CONNECT", body)
    if kind == 3:
        assert first & 0x06 == 0x02, "the bridge publishes commands at QoS 1"
        topic, pos = _text(body, 0)
        mid = int.from_bytes(body[pos : pos + 2], "big")
        props, pos = _varint(body, pos + 2)
        return ("PUBLISH", topic, mid, body[pos + props :])
    if kind == 4:
        assert len(body) == 2, "PUBACK of another length than the bridge's"
        return ("PUBACK", int.from_bytes(body, "big"))
    if kind in (8, 10):
        assert first & 0x0F == 0x02, "SUBSCRIBE and UNSUBSCRIBE flags are fixed"
        props, pos = _varint(body, 2)
        pos += props
        topics = []
        while pos < len(body):
            topic, pos = _text(body, pos)
            topics.append(topic)
            pos += kind == 8  # a SUBSCRIBE's options byte
        return ("SUBSCRIBE" if kind == 8 else "UNSUBSCRIBE", tuple(topics))
    if kind == 12:
        assert body == b""
        return ("PINGREQ",)
    raise AssertionError(f"packet type {kind} is not one the bridge sends")


def _packets(wire: bytes) -> list[Packet]:
    """Cut the byte stream into packets; it must end with a whole one."""
    packets = []
    pos = 0
    while pos < len(wire):
        size, body = _varint(wire, pos + 1)
        assert body + size <= len(wire), "the stream ends inside a packet"
        packets.append(_decode(wire[pos], wire[body : body + size]))
        pos = body + size
    return packets


@pytest.fixture
def connected() -> Iterator[tuple[MqttClient, socket.socket]]:
    with _connection() as pair:
        yield pair


@contextmanager
def _connection() -> Iterator[tuple[MqttClient, socket.socket]]:
    """An MqttClient whose paho client connected to a socket the test holds
    as the broker's; both ends' buffers small."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
        port = listener.getsockname()[1]
        mqtt = MqttClient(MqttSettings(url=f"mqtt://127.0.0.1:{port}"), [], lambda *_: None)
        mqtt._blocking_connect()
        broker, _ = listener.accept()
    with broker:
        sock = mqtt._client.socket()
        assert isinstance(sock, socket.socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
        yield mqtt, broker
        sock.close()


class _Choking:
    """The connection's socket, taking at each ``send()`` a random part of
    what it is offered, none at times (``BlockingIOError``, as a full socket
    says): the socket filling exactly inside a packet, and room coming back
    between two sends of one flush, as it can when the broker reads at that
    moment (or under TLS), made to happen at every flush."""

    def __init__(self, sock: socket.socket, rng: random.Random) -> None:
        self.sock = sock
        self.rng = rng

    def send(self, data: bytes) -> int:
        room = self.rng.choice([0, 1, 7, 100, len(data), len(data), len(data), len(data)])
        if not room:
            raise BlockingIOError
        return self.sock.send(data[:room])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def _read_some(broker: socket.socket, most: int) -> bytes:
    """What the broker side reads now: up to ``most`` bytes, less when that
    is all there is."""
    received = bytearray()
    while len(received) < most:
        try:
            chunk = broker.recv(most - len(received), socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        received += chunk
    return bytes(received)


def _read_to_end(broker: socket.socket) -> bytes:
    broker.settimeout(10)
    received = bytearray()
    while chunk := broker.recv(65536):
        received += chunk
    return bytes(received)


def test_our_acks_and_paho_packets_reach_the_wire_whole_and_in_order() -> None:
    """Batches of PUBACKs and PINGREQs (ours) and command publishes,
    SUBSCRIBEs and UNSUBSCRIBEs (paho's), queued in random order and flushed
    into a socket the broker side drains a few kilobytes at a time: every
    packet arrives whole, ours in the order we queued them, paho's in the
    order paho was asked, none inside another.  While this runs paho also
    reads (CONNACK, the PUBACKs of its publishes) through the same splice.

    Which cuts a run reaches depends on how much the kernel's socket takes at
    each send, which varies with the machine's load: the runs of several
    seeds together must reach both cases often (one seed alone reached only
    one of them in about one run in ten on a loaded machine)."""
    paho_cut = ours_cut = 0
    for seed in (1, 2, 3):
        with _connection() as (mqtt, broker):
            paho, ours = _interleave(mqtt, broker, seed)
        paho_cut += paho
        ours_cut += ours
    assert paho_cut > 10 and ours_cut > 10, (paho_cut, ours_cut)


def _interleave(mqtt: MqttClient, broker: socket.socket, seed: int) -> tuple[int, int]:
    """One seed's run; checks the wire and returns how often the full socket
    cut paho's packet and ours, with the other side's packets waiting."""
    client = mqtt._client
    rng = random.Random(seed)
    queued = bytearray()  # our packets, as MqttClient queues them
    splice = PahoSplice(client, _Choking(mqtt._client.socket(), rng), queued)  # type: ignore[arg-type]
    splice.to_paho(b"\x20\x03\x00\x00\x00")  # CONNACK: paho may publish now
    ours: list[Packet] = []
    theirs: list[Packet] = []
    unacked: list[int] = []
    wire = bytearray()
    paho_cut = ours_cut = 0
    mid = 0
    for round_ in range(300):
        # Stretches of many acknowledgements and few commands, then the
        # reverse, so that each side finds the other's packets cut.
        acks_heavy = round_ // 20 % 2
        for _ in range(rng.choice([200, 3000] if acks_heavy else [0, 10, 50])):
            mid = mid % 65_535 + 1
            queued += puback(mid)
            ours.append(("PUBACK", mid))
        if rng.random() < 0.15:
            queued += PINGREQ
            ours.append(("PINGREQ",))
        if rng.random() < (0.1 if acks_heavy else 0.6):
            topic, payload = f"cmd/D{rng.randrange(100)}", rng.randbytes(rng.randrange(1, 20_000))
            info = client.publish(topic, payload, qos=1)
            theirs.append(("PUBLISH", topic, info.mid, payload))
            unacked.append(info.mid)
        if rng.random() < 0.1:
            filters = (f"a/{rng.randrange(9)}/#", "b/+")
            client.subscribe([(f, 1) for f in filters])
            theirs.append(("SUBSCRIBE", filters))
        if rng.random() < 0.05:
            client.unsubscribe(["b/+"])
            theirs.append(("UNSUBSCRIBE", ("b/+",)))
        if unacked and rng.random() < 0.2:  # the broker acknowledges commands
            splice.to_paho(b"".join(puback(m) for m in unacked))
            unacked.clear()
        splice.flush()
        # Which side the full socket cut, with the other side's packets waiting
        # (private state, read only to prove the test reached those cases).
        if splice._ours_started and client.want_write():
            ours_cut += 1
        if client.want_write() and client._out_packet[0]["pos"] and queued:
            paho_cut += 1
        wire += _read_some(broker, rng.choice([0, 2000, 64_000]))
    for _ in range(100_000):
        if not splice.writes_pending:
            break
        splice.flush()
        wire += _read_some(broker, 65536)
    assert not splice.writes_pending
    splice.sock.shutdown(socket.SHUT_WR)
    wire += _read_to_end(broker)

    packets = _packets(bytes(wire))
    assert packets[0][0] == "CONNECT"
    assert [p for p in packets if p[0] in ("PUBACK", "PINGREQ")] == ours
    assert [p for p in packets[1:] if p[0] not in ("PUBACK", "PINGREQ")] == theirs
    return paho_cut, ours_cut


def test_the_connect_asks_for_no_topic_alias(
    connected: tuple[MqttClient, socket.socket],
) -> None:
    """No Topic Alias Maximum in the bridge's CONNECT: MQTT 5 reads that as 0,
    so the broker may send no alias (bridge/core/mqtt_codec.py refuses one)."""
    mqtt, broker = connected
    mqtt._client.loop_write()
    mqtt._client.socket().shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
    ((kind, body),) = _packets(_read_to_end(broker))
    assert kind == "CONNECT"
    assert body[:7] == b"\x00\x04MQTT\x05"
    props, _ = Properties(PacketTypes.CONNECT).unpack(body[10:])  # after flags, keepalive
    assert props.SessionExpiryInterval > 0  # the properties were found
    assert not hasattr(props, "TopicAliasMaximum")


def test_paho_reads_only_what_it_is_given(connected: tuple[MqttClient, socket.socket]) -> None:
    """Bytes on the socket are the fast lane's: paho, asked to read, finds
    nothing until packets are passed on to it."""
    mqtt, broker = connected
    splice = PahoSplice(mqtt._client, mqtt._client.socket(), bytearray())  # type: ignore[arg-type]
    broker.sendall(b"\x20\x03\x00\x00\x00")
    assert mqtt._client.loop_read() == 0 and not mqtt._client.is_connected()
    splice.to_paho(b"\x20\x03\x00\x00\x00")
    assert mqtt._client.is_connected()
    assert splice.sock.recv(5) == b"\x20\x03\x00\x00\x00"  # still there for the fast lane


def test_a_paho_client_that_writes_by_itself_is_refused() -> None:
    client = MqttClient(MqttSettings(url="mqtt://127.0.0.1:1"), [], lambda *_: None)._client
    client.on_socket_register_write = None
    left, right = socket.socketpair()
    with left, right, pytest.raises(ValueError, match="write hook"):
        PahoSplice(client, left, bytearray())
