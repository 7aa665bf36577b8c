"""The sd_notify client against a real datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from bridge.io import sdnotify


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound AF_UNIX datagram socket, named in $NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yield sock


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_helpers_send_one_datagram_each(systemd: socket.socket) -> None:
    assert sdnotify.ready()
    assert sdnotify.status("mqtt connected, kafka down")
    assert sdnotify.stopping()
    assert sdnotify.watchdog()
    assert sdnotify.extend_timeout(2.5)
    assert sdnotify.notify("RELOADING=1")
    assert [received(systemd) for _ in range(6)] == [
        "READY=1",
        "STATUS=mqtt connected, kafka down",
        "STOPPING=1",
        "WATCHDOG=1",
        "EXTEND_TIMEOUT_USEC=2500000",
        "RELOADING=1",
    ]


def test_status_text_cannot_inject_another_assignment(systemd: socket.socket) -> None:
    assert sdnotify.ready("up\nMAINPID=1")
    assert received(systemd) == "READY=1\nSTATUS=up MAINPID=1"


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"edge-bridge-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert received(sock) == "READY=1"


def test_no_notify_socket_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.ready() is False
    assert sdnotify.watchdog_interval() is None


def test_a_socket_nobody_listens_on_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sdnotify.watchdog() is False


def test_watchdog_interval_is_half_the_timeout_for_this_process(
    systemd: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("WATCHDOG_USEC", "soon")
    assert sdnotify.watchdog_interval() is None


async def test_watchdog_loop_pings_from_the_trio_loop(
    systemd: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ping every 50 ms
    receiver = trio.socket.from_stdlib_socket(systemd)
    async with trio.open_nursery() as nursery:
        assert await nursery.start(sdnotify.watchdog_loop) == 0.05
        with trio.fail_after(5):
            pings = [(await receiver.recv(4096)).decode() for _ in range(3)]
        nursery.cancel_scope.cancel()
    assert pings == ["WATCHDOG=1"] * 3


async def test_a_stuck_loop_stops_the_pings(
    systemd: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ping every 50 ms
    receiver = trio.socket.from_stdlib_socket(systemd)  # now non-blocking
    async with trio.open_nursery() as nursery:
        await nursery.start(sdnotify.watchdog_loop)
        with trio.fail_after(5):
            assert await receiver.recv(4096) == b"WATCHDOG=1"
        time.sleep(0.2)  # a task blocking the loop for four intervals
        with pytest.raises(BlockingIOError):
            systemd.recv(4096)  # no ping was sent meanwhile
        with trio.fail_after(5):  # and they resume once the loop runs again
            assert await receiver.recv(4096) == b"WATCHDOG=1"
        nursery.cancel_scope.cancel()


async def test_watchdog_loop_without_watchdog_returns_at_once(systemd: socket.socket) -> None:
    async with trio.open_nursery() as nursery:
        assert await nursery.start(sdnotify.watchdog_loop) is None
