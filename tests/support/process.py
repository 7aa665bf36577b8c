"""A broker binary run as a child process for the duration of a test.

Mosquitto and Tansu are managed the same way: start with output to a log file,
wait until the port accepts connections (failing fast with the log if the
process dies instead), stop with SIGTERM, kill with SIGKILL.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from .waiting import port_open, wait_until

#: How much of a broker's log goes into a failure message.
LOG_TAIL_CHARS = 4000


class ServerProcess:
    """One server binary listening on host:port, restartable with the same argv."""

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, host: str, port: int
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.host = host
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The running process's id; AssertionError when not running."""
        return self._running().pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> Self:
        """Start the process and return once its port accepts connections."""
        if self.running:
            raise AssertionError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Appending keeps the log of every run of a restarted broker in one file.
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(self._listening, timeout, f"{self.name} to listen on {self.host}:{self.port}")
        return self

    def send_signal(self, sig: int) -> None:
        self._running().send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; return the exit code (None if it was not running).

        A process that ignores SIGTERM past `timeout` is killed and the test
        fails: a broker that cannot shut down is a problem worth seeing.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            # A SIGSTOPped process only acts on SIGTERM once it runs again.
            proc.send_signal(signal.SIGCONT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(
                    f"{self.name} did not exit within {timeout:g} s of SIGTERM; killed"
                ) from None
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL and reap, leaving no chance to save state."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_text(self) -> str:
        """Everything the process wrote so far (all runs)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise AssertionError(f"{self.name} is not running")
        return self._proc

    def _listening(self) -> bool:
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            tail = self.log_text()[-LOG_TAIL_CHARS:]
            raise AssertionError(
                f"{self.name} exited with code {code} before listening on port "
                f"{self.port}; command {' '.join(self.argv)}; log {self.log_path}:\n{tail}"
            )
        return port_open(self.host, self.port)
