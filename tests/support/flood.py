"""Queue hundreds of thousands of QoS 1 messages at a broker in seconds.

paho spends 10-15 us per publish; a test that must build a backlog of 300,000
messages for a persistent session cannot wait for that.  Here, as in
bench/mqtt_load.py, PUBLISH packets are built by concatenation and written a
few hundred per ``sendall()`` over raw MQTT 3.1.1 connections (keep-alive 0,
so the broker sends nothing but CONNACK and PUBACKs), one thread per
connection, with a thread counting the PUBACKs.  A message counts as queued
once the broker acknowledged it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

from bench.mqtt_load import connect_packet

#: Packets per sendall().
BURST = 500
#: Messages a connection may have sent and not seen acknowledged.
WINDOW = 20_000


def varint(n: int) -> bytes:
    """MQTT's variable byte integer (remaining lengths, property lengths)."""
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_qos1_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + packet_id.to_bytes(2, "big") + payload
    return b"\x32" + varint(len(body)) + body


class _Connection:
    """One publishing connection and the count of its PUBACKs."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.sendall(connect_packet(client_id))  # MQTT 3.1.1, keep-alive 0
        connack = self.sock.recv(4)
        if connack[:2] != b"\x20\x02" or connack[3:4] != b"\x00":
            raise AssertionError(f"{client_id}: broker refused CONNECT: {connack!r}")
        self.acked = 0
        self.error: BaseException | None = None
        self.changed = threading.Condition()
        self._reader = threading.Thread(target=self._count_acks, daemon=True)
        self._reader.start()

    def _count_acks(self) -> None:
        received = 0
        try:
            while True:
                data = self.sock.recv(65_536)
                if not data:
                    return
                received += len(data)
                with self.changed:
                    self.acked = received // 4  # PUBACKs only: 4 bytes each
                    self.changed.notify_all()
        except OSError as exc:
            with self.changed:
                self.error = exc
                self.changed.notify_all()

    def wait_acked(self, count: int, deadline: float) -> None:
        with self.changed:
            while self.acked < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.error is not None:
                    raise AssertionError(
                        f"broker acknowledged {self.acked} of {count} messages: {self.error}"
                    )
                self.changed.wait(remaining)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        self.sock.close()
        self._reader.join(timeout=5)


def queue_qos1(
    host: str,
    port: int,
    count: int,
    message: Callable[[int], tuple[str, bytes]],
    *,
    connections: int = 3,
    timeout: float = 60.0,
) -> None:
    """Publish messages ``message(0)`` to ``message(count - 1)`` (topic, payload)
    at QoS 1 over ``connections`` connections; return once the broker has
    acknowledged every one, or fail at ``timeout``."""
    deadline = time.monotonic() + timeout
    failures: list[BaseException] = []

    def publish(lane: int) -> None:
        conn = _Connection(host, port, f"flood-{lane}-{time.monotonic_ns()}")
        try:
            sent = 0
            indexes = range(lane, count, connections)
            for start in range(0, len(indexes), BURST):
                conn.wait_acked(sent - WINDOW, deadline)
                packets = []
                for index in indexes[start : start + BURST]:
                    topic, payload = message(index)
                    packets.append(publish_qos1_packet(topic, payload, index % 65_535 + 1))
                conn.sock.sendall(b"".join(packets))
                sent += len(packets)
            conn.wait_acked(sent, deadline)
        except BaseException as exc:  # reported to the test below
            failures.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=publish, args=(lane,)) for lane in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 5)
    if failures:
        raise AssertionError(f"queueing {count} messages failed: {failures[0]}") from failures[0]
