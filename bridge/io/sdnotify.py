"""systemd's notify protocol: readiness, status, stopping and the watchdog.

Why no library (sdnotify, systemd-python, cysystemd): the wire format is one
datagram of ``KEY=value`` lines sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace).  That is a
dozen lines of socket code; systemd-python needs libsystemd headers to build on
the gateway, and the pure-Python packages add nothing but a dependency.

Every function is a no-op that returns False when ``$NOTIFY_SOCKET`` is unset
(run by hand, in a container, under another supervisor), and never raises: a
lost notification must not take the daemon down.  The socket is non-blocking,
so a full receive queue drops that one message instead of stalling trio's loop;
the next watchdog ping comes half a timeout later.

The watchdog pings come from :func:`watchdog_loop`, a task on trio's loop
rather than a thread: if the loop gets stuck (a blocking call, a busy loop) the
pings stop and systemd restarts the service after ``WatchdogSec``.
"""

from __future__ import annotations

import os
import socket

import structlog
import trio

log = structlog.get_logger(__name__)


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]
    return path


def notify(state: str) -> bool:
    """Send one notification (``"READY=1"``, or several ``KEY=value`` lines joined
    by newlines).  True when it was handed to the socket."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("sdnotify.send_failed", state=state.split("=", 1)[0], error=str(exc))
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """Startup finished (systemd starts units ordered after this one)."""
    return notify("READY=1" if status_text is None else f"READY=1\nSTATUS={_line(status_text)}")


def stopping() -> bool:
    """Shutdown began (``systemctl status`` shows "deactivating")."""
    return notify("STOPPING=1")


def watchdog() -> bool:
    """One keep-alive ping."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """The one-line state shown by ``systemctl status``."""
    return notify(f"STATUS={_line(text)}")


def extend_timeout(seconds: float) -> bool:
    """Ask for ``seconds`` more before the start (or stop) timeout fires, e.g. while
    waiting for the MQTT broker at startup or flushing at shutdown.  Sent from the
    trio loop it doubles as proof that the loop is alive."""
    return notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")


def _line(text: str) -> str:
    # A newline would start a new assignment (e.g. a crafted "READY=1").
    return " ".join(text.splitlines())


def watchdog_interval() -> float | None:
    """Seconds between pings: half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3)
    advises.  None when no watchdog is configured for this process (unset, not a
    positive number, or ``$WATCHDOG_PID`` names another process)."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0 or _address() is None:
        return None
    return usec / 2 / 1_000_000


async def watchdog_loop(
    *, task_status: trio.TaskStatus[float | None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Ping the watchdog from trio's loop until cancelled.  Reports the interval
    (None: no watchdog, and the task returns at once) through ``task_status``."""
    interval = watchdog_interval()
    task_status.started(interval)
    if interval is None:
        return
    log.info("sdnotify.watchdog_enabled", interval_s=interval)
    while True:
        watchdog()
        await trio.sleep(interval)
