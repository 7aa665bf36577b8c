"""A broker of the test's own: a plain socket server that speaks just enough
MQTT to take the daemon's CONNECT and SUBSCRIBE, then sends whatever bytes the
test scripted for that connection and records, in order, the packet ids of the
PUBACKs the daemon sends back.

Used where mosquitto cannot be made to do what a test needs: send bytes that
are not MQTT, or show the order of the daemon's PUBACKs on the wire.  One
scripted connection after another, each read until the daemon closes it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


def varint(n: int) -> bytes:
    """An MQTT variable byte integer."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def publish_qos1(topic: bytes, mid: int, payload: bytes, properties: bytes = b"") -> bytes:
    """An MQTT 5 QoS 1 PUBLISH."""
    body = len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big")
    return packet(0x32, body + varint(len(properties)) + properties + payload)


class PacketReader:
    """Whole MQTT packets from a socket: (first byte, body)."""

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


#: A script: its bytes, or (bytes, PUBACKs, rest): ``rest`` is sent once the
#: daemon has sent that many PUBACKs on the connection, so that what the bytes
#: left half-written is certainly read on its own first.
Script = bytes | tuple[bytes, int, bytes]


class ScriptedBroker:
    """Serves ``scripts``, one connection each; records the daemon's PUBACKs."""

    def __init__(self, scripts: Sequence[Script]) -> None:
        self.scripts = list(scripts)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.pubacks: list[int] = []
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        for script in self.scripts:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                self.connections += 1
                self._session(conn, script)

    def _session(self, conn: socket.socket, script: Script) -> None:
        conn.settimeout(30)
        reader = PacketReader(conn)
        first, _ = reader.packet()
        assert first == 0x10, "CONNECT first"
        conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK: new session, accepted, no properties
        first, body = reader.packet()
        assert first == 0x82, "then SUBSCRIBE"
        conn.sendall(packet(0x90, body[:2] + b"\x00\x01"))  # SUBACK: granted QoS 1
        data, after, rest = script if isinstance(script, tuple) else (script, 0, b"")
        conn.sendall(data)
        acked = 0
        while True:  # until the daemon closes the connection (or the test ends)
            try:
                first, body = reader.packet()
            except (OSError, EOFError):
                return
            if first == 0x40:
                self.pubacks.append(int.from_bytes(body[:2], "big"))
                acked += 1
                if rest and acked == after:
                    conn.sendall(rest)

    @contextmanager
    def running(self) -> Iterator[ScriptedBroker]:
        self._thread.start()
        try:
            yield self
        finally:
            self.listener.close()
