"""The daemon speaks systemd's notify protocol: READY=1 once MQTT is connected
and the consumers run, WATCHDOG=1 from the trio loop, STOPPING=1 on SIGTERM.

The test plays systemd: it binds a datagram socket, passes its path in
NOTIFY_SOCKET (and WATCHDOG_USEC) to the real daemon, and reads what arrives.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, wait_until


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    try:
        yield sock, path
    finally:
        sock.close()


def _drain(sock: socket.socket, into: list[str]) -> list[str]:
    while True:
        try:
            into.append(sock.recv(4096).decode())
        except BlockingIOError:
            return into


def test_ready_watchdog_and_stopping(
    setup: BridgeSetup, notify_socket: tuple[socket.socket, Path]
) -> None:
    sock, path = notify_socket
    received: list[str] = []
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}  # ping every 0.2 s
    bridge = BridgeProcess(setup.config(), env=env)
    try:
        wait_until(lambda: any("READY=1" in m for m in _drain(sock, received)), 30, "READY=1")
        seen = datetime.now(UTC)
        ready_at = next(i for i, m in enumerate(received) if "READY=1" in m)
        # The daemon logs bridge.ready, then sends READY=1; the test reads its
        # log through a pipe and a thread, so the line may still be on its way:
        # wait for it, then check by its timestamp that it was not logged after
        # READY=1 arrived.
        logged = datetime.fromisoformat(bridge.wait_for_event("bridge.ready", 10)["timestamp"])
        assert logged <= seen, "READY=1 came before the daemon was ready"
        wait_until(
            lambda: sum("WATCHDOG=1" in m for m in _drain(sock, received)[ready_at:]) >= 3,
            10,
            "three watchdog pings",
        )
        assert bridge.stop() == 0
    finally:
        bridge.kill()
    _drain(sock, received)
    assert any("STOPPING=1" in m for m in received)
