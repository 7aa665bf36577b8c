"""The load generator: MQTT publishers as separate processes, on raw sockets.

Why raw sockets instead of paho: the load generator shares the two cores with
the system under test, so it must cost as little CPU as possible.  paho spends
10-15 us per publish; here a PUBLISH packet is a few byte concatenations and
hundreds of them go out in one ``sendall``.  The protocol used is the small
subset of MQTT 3.1.1 a publisher needs: CONNECT, PUBLISH at QoS 0 or 1, and
counting PUBACKs (with keep-alive 0 the broker sends nothing else).

Every payload is exactly :data:`PAYLOAD_BYTES` bytes of telemetry in the shape
the default mapping expects (two metrics, so each message becomes two clean
records and one raw record), plus ``sent_ns``, the publisher's wall clock when
it built the packet; the latency probe reads it back from the raw record.

Pacing: a publisher sends at most ``rate`` messages/s (a token bucket), and
never lets the messages not yet seen on Kafka exceed its share of ``window``.
The window makes a throughput run closed-loop: the offered load follows what
the bridge delivers, so no CPU goes into messages the broker would queue or
drop, and the measurement is the bridge's capacity, not the broker's backlog.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized

from tests.support import sparkplug_encoder as enc

PAYLOAD_BYTES = 200
DEVICES = 1000
#: Messages per sendall: large enough to amortise the syscall, small enough
#: to keep pacing smooth at 10k msgs/s.
BURST = 200
#: Pause when the rate or the window allows nothing: long enough not to spin
#: (the load shares the cores with what it measures), short against 10k msgs/s.
PAUSE_S = 0.001
TENANT = "bench"
#: A PUBACK read shorter than this (in bytes, 4 per PUBACK) is followed by a pause.
ACK_BATCH_BYTES = 4096

_TEMPLATE = (
    b'{"schema_version":1,"device":"%s","ts":%d,"sent_ns":%d,'
    b'"metrics":{"temperature":%.1f,"humidity":%.1f},"pad":"%s"}'
)


def device_name(index: int) -> str:
    return f"DEV-{index:04d}"


def topic_for(device: str) -> str:
    return f"tenant/{TENANT}/device/{device}/telemetry"


def _fields(device: str, sent_ns: int, seq: int, pad: bytes) -> bytes:
    return _TEMPLATE % (
        device.encode(),
        sent_ns // 1_000_000,
        sent_ns,
        10.0 + seq % 200 / 10,
        40.0 + seq % 199 / 10,
        pad,
    )


# Every field has a fixed width (4-digit device, 13-digit ms, 19-digit ns,
# values 10.0-29.9 and 40.0-59.8), so one pad fits every message.
_PAD = b"x" * (PAYLOAD_BYTES - len(_fields(device_name(0), time.time_ns(), 0, b"")))


def payload(device: str, sent_ns: int, seq: int) -> bytes:
    """One telemetry message of exactly PAYLOAD_BYTES bytes."""
    return _fields(device, sent_ns, seq, _PAD)


def sent_ns_of(value: bytes) -> int:
    """The ``sent_ns`` field of a payload (or a raw record holding one)."""
    start = value.index(b'"sent_ns":') + 10
    return int(value[start : value.index(b",", start)])


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: bytes) -> bytes:
    return len(text).to_bytes(2, "big") + text


def connect_packet(client_id: str) -> bytes:
    # MQTT 3.1.1, clean session, keep-alive 0 (so the broker never pings us).
    body = _string(b"MQTT") + b"\x04\x02\x00\x00" + _string(client_id.encode())
    return b"\x10" + _varint(len(body)) + body


class PublishFrames:
    """Pre-computed packet framing for one topic and QoS; only the packet id and
    payload change per message."""

    def __init__(self, topic: str, qos: int) -> None:
        name = _string(topic.encode())
        self.qos = qos
        remaining = len(name) + (2 if qos else 0) + PAYLOAD_BYTES
        self.head = bytes([0x30 | (qos << 1)]) + _varint(remaining) + name

    def frame(self, packet_id: int, body: bytes) -> bytes:
        if self.qos:
            return self.head + packet_id.to_bytes(2, "big") + body
        return self.head + body


@dataclass(frozen=True)
class LoadSpec:
    """What one publisher process does."""

    host: str
    port: int
    client_id: str
    qos: int
    devices: tuple[int, ...]
    rate: float  # messages/s for this publisher; 0 means unpaced
    window: int  # this publisher's share of messages not yet on Kafka
    share: float  # this publisher's fraction of all traffic (for the window)
    sparkplug: bool = False  # Sparkplug B DDATA instead of JSON (see SparkplugLoad)


SPB_GROUP = "bench"
#: The DDATA's metrics: (alias, datatype), all named in the DBIRTH.
SPB_METRICS = [(a, enc.DOUBLE) for a in range(5)] + [(a, enc.INT32) for a in range(5, 8)]
SPB_METRICS += [(8, enc.BOOLEAN), (9, enc.STRING)]


def _spb_value(datatype: int, alias: int, seq: int) -> object:
    if datatype == enc.DOUBLE:
        return 20.0 + alias + seq / 10
    if datatype == enc.INT32:
        return seq * (alias + 1)
    if datatype == enc.BOOLEAN:
        return seq % 2 == 0
    return ("eco", "boost")[seq % 2]


def _packet(name: bytes, qos: int, packet_id: int, body: bytes) -> bytes:
    """A PUBLISH of any payload size (``name``: the length-prefixed topic)."""
    pid = packet_id.to_bytes(2, "big") if qos else b""
    return (
        bytes([0x30 | (qos << 1)]) + _varint(len(name) + len(pid) + len(body)) + name + pid + body
    )


class SparkplugLoad:
    """One Sparkplug B edge node per publisher (the client id), with its share
    of the devices: an NBIRTH, a DBIRTH per device naming the 10 metrics with
    their aliases, then DDATA naming all 10 by alias only, seq counting on
    over the node's messages.  The 256 DDATA bodies (one per seq) are built
    once, so a message costs the load generator a concatenation, as JSON does."""

    def __init__(self, spec: LoadSpec) -> None:
        node = spec.client_id
        self.qos = spec.qos
        self.names = [
            _string(f"spBv1.0/{SPB_GROUP}/DDATA/{node}/{device_name(d)}".encode())
            for d in spec.devices
        ]
        births = [(f"spBv1.0/{SPB_GROUP}/NBIRTH/{node}", enc.node_birth([], seq=0))]
        for n, d in enumerate(spec.devices):
            metrics = [
                enc.metric(f"m{a}", alias=a, datatype=dt, value=_spb_value(dt, a, 0))
                for a, dt in SPB_METRICS
            ]
            topic = f"spBv1.0/{SPB_GROUP}/DBIRTH/{node}/{device_name(d)}"
            births.append((topic, enc.payload(metrics, seq=(n + 1) % 256)))
        self.births = [(_string(topic.encode()), body) for topic, body in births]
        self.bodies = [
            enc.payload(
                [
                    enc.metric(alias=a, datatype=dt, value=_spb_value(dt, a, seq))
                    for a, dt in SPB_METRICS
                ],
                seq=seq,
            )
            for seq in range(256)
        ]
        self.seq = len(births) % 256

    def frame(self, index: int, packet_id: int) -> bytes:
        body = self.bodies[self.seq]
        self.seq = (self.seq + 1) % 256
        return _packet(self.names[index % len(self.names)], self.qos, packet_id, body)


def run_publisher(
    spec: LoadSpec,
    delivered: Synchronized[int],
    published: Synchronized[int],
    stop: Synchronized[int],
) -> None:
    """Publish until ``stop`` is set; then, at QoS 1, wait for every PUBACK.

    ``delivered`` is the count of messages seen on Kafka (all publishers);
    ``published`` receives this process's count of messages the broker has
    (acknowledged at QoS 1, written at QoS 0).
    """
    sock = socket.create_connection((spec.host, spec.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(spec.client_id))
    connack = sock.recv(4)
    if connack[:2] != b"\x20\x02" or connack[3:4] != b"\x00":
        raise RuntimeError(f"{spec.client_id}: broker refused CONNECT: {connack!r}")
    acked = _AckCounter(sock) if spec.qos else None
    targets = [
        (PublishFrames(topic_for(device_name(d)), spec.qos), device_name(d)) for d in spec.devices
    ]
    sent = 0
    packet_id = 0
    spb = SparkplugLoad(spec) if spec.sparkplug else None
    if spb is not None:  # the births first: they explain the DDATA's aliases
        births = [_packet(name, spec.qos, n + 1, body) for n, (name, body) in enumerate(spb.births)]
        sock.sendall(b"".join(births))
        sent = packet_id = len(births)
    started = time.monotonic()
    while not stop.value:
        allowed = BURST
        if spec.rate:
            allowed = min(allowed, int((time.monotonic() - started) * spec.rate) - sent)
        allowed = min(allowed, int(delivered.value * spec.share) + spec.window - sent)
        if allowed <= 0:
            time.sleep(PAUSE_S)
            continue
        packets = []
        now = time.time_ns()
        for i in range(sent, sent + allowed):
            packet_id = packet_id % 65535 + 1
            if spb is not None:
                packets.append(spb.frame(i, packet_id))
                continue
            frames, device = targets[i % len(targets)]
            packets.append(frames.frame(packet_id, payload(device, now, i)))
        sock.sendall(b"".join(packets))
        sent += allowed
        if acked is None:
            published.value = sent
        else:
            published.value = acked.count
    if acked is not None:
        deadline = time.monotonic() + 30
        while acked.count < sent and time.monotonic() < deadline:
            published.value = acked.count
            time.sleep(0.01)
        published.value = acked.count
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()


class _AckCounter:
    """Counts PUBACKs (4 bytes each; nothing else arrives with keep-alive 0)
    in a thread of the publisher process.

    The broker writes PUBACKs as they come, so a reader that wakes up for
    every few of them pays a wake-up and a GIL hand-over per handful of
    messages: that cost 8-9 us of the shared cores per message at QoS 1.
    After a short read the thread pauses for :data:`PAUSE_S` so that PUBACKs
    pile up in the socket buffer and arrive a few thousand per ``recv``; the
    count lags by at most that pause, which the closed-loop window absorbs.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._bytes = 0
        self._sock = sock
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def count(self) -> int:
        return self._bytes // 4

    def _read(self) -> None:
        while True:
            try:
                chunk = self._sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            self._bytes += len(chunk)
            if len(chunk) < ACK_BATCH_BYTES:
                time.sleep(PAUSE_S)
