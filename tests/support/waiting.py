"""Deadline-bounded polling, and free loopback ports.

Tests never sleep to let something happen: they poll the condition they need
until a deadline, and fail naming what they were waiting for. That keeps them
fast when the system is fast and gives a readable failure when it is not.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")

#: Polling period: short enough not to add latency to fast tests, long enough
#: not to compete for the two shared CPU cores with the processes under test.
POLL_INTERVAL = 0.02


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks it from the ephemeral range, so it is never 1883 and
    never the system broker's port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port is accepted right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    A predicate returns a bool, or a value that is None (or empty) while the
    condition does not hold yet.

    Raises AssertionError naming `what` if the deadline passes first. An
    exception raised by `predicate` propagates at once, so a predicate can
    fail fast (for example when the process it waits on has died).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_INTERVAL)


async def async_wait_until(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    """`wait_until` for trio tests: polls without blocking the event loop."""
    deadline = trio.current_time() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if trio.current_time() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await trio.sleep(POLL_INTERVAL)
