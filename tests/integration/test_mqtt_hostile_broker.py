"""A broker that sends the daemon bytes that are not MQTT, or MQTT it refuses.

The daemon's MQTT codec (bridge/core/mqtt_codec.py) is tested with hypothesis
on its own; this shows what the running daemon does with such bytes: the
connection is given up with a reason that names what was wrong, the daemon
reconnects and goes on, and a well-formed QoS 1 message whose payload is hostile
(1,000-deep nesting, a 300-digit number, not JSON at all) becomes a dead letter
and is acknowledged once that record is in Kafka.

The broker is a plain socket server of the test's: one scripted connection after
another, each read until the daemon closes it.
"""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, wait_until

TOPIC = b"tenant/t1/device/D1/telemetry"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _publish_qos1(mid: int, payload: bytes, properties: bytes = b"") -> bytes:
    body = len(TOPIC).to_bytes(2, "big") + TOPIC + mid.to_bytes(2, "big")
    return _packet(0x32, body + _varint(len(properties)) + properties + payload)


#: What each connection gets after its CONNACK and SUBACK, in turn.
SCRIPTS = [
    # A remaining length of five continuation bytes: not MQTT.
    b"\xff\xff\xff\xff\xff\xff",
    # A well-formed MQTT 5 PUBLISH with a Topic Alias (property 0x23), which the
    # daemon's CONNECT did not allow.
    _publish_qos1(7, b'{"n": 1}', b"\x23\x00\x01"),
    # Well-formed packets with hostile payloads: each must become a dead letter.
    _publish_qos1(1, b"[" * 1000 + b"]" * 1000)
    + _publish_qos1(2, b'{"schema_version": 1, "metrics": {"t": ' + b"9" * 300 + b"}}")
    + _publish_qos1(3, b"\x00\xff garbage"),
]


class HostileBroker:
    """Serves SCRIPTS, one connection each; records the packets the daemon sent."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pubacks: list[int] = []
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        for script in SCRIPTS:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                self.connections += 1
                self._session(conn, script)

    def _session(self, conn: socket.socket, script: bytes) -> None:
        conn.settimeout(30)
        reader = _Reader(conn)
        first, _ = reader.packet()
        assert first == 0x10, "CONNECT first"
        conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK: new session, accepted, no properties
        first, body = reader.packet()
        assert first == 0x82, "then SUBSCRIBE"
        conn.sendall(_packet(0x90, body[:2] + b"\x00\x01"))  # SUBACK: granted QoS 1
        conn.sendall(script)
        while True:  # until the daemon closes the connection (or the test ends)
            try:
                first, body = reader.packet()
            except (OSError, EOFError):
                return
            if first == 0x40:
                self.pubacks.append(int.from_bytes(body[:2], "big"))

    @contextmanager
    def running(self) -> Iterator[HostileBroker]:
        self._thread.start()
        try:
            yield self
        finally:
            self.listener.close()


class _Reader:
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.conn.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def packet(self) -> tuple[int, bytes]:
        first = self._take(1)[0]
        size = shift = 0
        while True:
            byte = self._take(1)[0]
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, self._take(size)


def _dead_letters(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    prefix = 'edge_bridge_dead_letters_total{reason="'
    return {
        line[len(prefix) :].split('"')[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def test_a_hostile_broker_costs_a_connection_never_the_daemon(setup: BridgeSetup) -> None:
    with HostileBroker().running() as broker:
        config = setup.config(
            mqtt_url=f"mqtt://127.0.0.1:{broker.port}", mqtt_extra="reconnect_min_s = 0.1"
        )
        with BridgeProcess(config) as bridge:
            wait_until(lambda: len(bridge.events("mqtt.disconnected")) >= 2, 30, "two drops")
            garbage, alias = bridge.events("mqtt.disconnected")[:2]
            assert "malformed packet from the broker" in garbage["reason"], garbage
            assert "topic alias" in alias["reason"], alias
            # The third connection: three dead letters, each acknowledged once
            # its record is in Kafka; the daemon is still the same process.
            wait_until(lambda: sorted(broker.pubacks) == [1, 2, 3], 60, "three PUBACKs")
            assert 7 not in broker.pubacks, "a refused packet is never acknowledged"
            assert broker.connections == 3
            assert _dead_letters(setup.listen_port) == {
                "too_deep": 1,
                "value_out_of_range": 1,
                "invalid_json": 1,
            }
            assert bridge.stop() == 0
