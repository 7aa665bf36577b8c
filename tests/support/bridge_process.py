"""The real daemon, `python -m bridge run`, as a child process of a test.

Integration tests drive the bridge the way an operator does: a config file,
flags, environment, signals. They learn what it is doing from its JSON log on
stderr (one object per line, each with an "event" key), which a reader thread
collects so a test can wait for an event with a deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from signal import SIGTERM
from typing import IO, Any, Self

REPO_ROOT = Path(__file__).resolve().parents[2]

#: How many output lines go into a failure message.
TAIL_LINES = 60


@dataclass(frozen=True)
class OutputLine:
    """One line the daemon wrote; `event` is set when it is a JSON log object."""

    stream: str
    text: str
    event: dict[str, Any] | None


def write_config(directory: Path, text: str, name: str = "bridge.toml") -> Path:
    """Write `text` (dedented) to directory/name and return the path.

    Also fits mapping files a config includes: write them under their own name.
    """
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _parse(stream: str, raw: str) -> OutputLine:
    text = raw.rstrip("\n")
    try:
        parsed = json.loads(text)
    except ValueError:
        return OutputLine(stream, text, None)
    if isinstance(parsed, dict) and isinstance(parsed.get("event"), str):
        return OutputLine(stream, text, parsed)
    return OutputLine(stream, text, None)


def _matches(event: dict[str, Any], name: str, match: Mapping[str, Any]) -> bool:
    return event.get("event") == name and all(
        key in event and event[key] == value for key, value in match.items()
    )


class BridgeProcess:
    """`python -m bridge run --config CONFIG --log-format json ARGS...`, started at once.

    The environment is the test runner's minus every EDGE_BRIDGE_* variable
    (so nothing from the outer shell leaks into a test), plus `env`.
    `config=None` leaves out --config, for tests of the built-in defaults.
    The working directory defaults to the repository root.
    """

    def __init__(
        self,
        config: Path | None,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        argv = [sys.executable, "-m", "bridge", "run"]
        if config is not None:
            argv += ["--config", str(config)]
        argv += ["--log-format", "json", *args]
        self.argv = argv
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_BRIDGE_")}
        child_env["PYTHONUNBUFFERED"] = "1"
        child_env.update(env or {})
        self._lines: list[OutputLine] = []
        self._open_streams = 2
        self._changed = threading.Condition()
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env,
            cwd=cwd or REPO_ROOT,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(name, pipe), daemon=True)
            for name, pipe in (("stdout", self._proc.stdout), ("stderr", self._proc.stderr))
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while the daemon runs."""
        return self._proc.poll()

    @property
    def lines(self) -> list[OutputLine]:
        """A snapshot of every line so far, both streams, in arrival order."""
        with self._changed:
            return list(self._lines)

    def mark(self) -> int:
        """A position in the output; pass it as `since` to wait for a later event."""
        with self._changed:
            return len(self._lines)

    def events(self, name: str, **match: Any) -> list[dict[str, Any]]:
        """Every logged event called `name` whose fields equal `match` so far."""
        return [
            line.event
            for line in self.lines
            if line.event is not None and _matches(line.event, name, match)
        ]

    def wait_for_event(
        self, name: str, timeout: float = 15.0, *, since: int = 0, **match: Any
    ) -> dict[str, Any]:
        """The first event `name` with fields equal to `match`, at or after line `since`.

        Waits up to `timeout` seconds. Fails at once, with the output, if the
        daemon exits first; fails with the output at the deadline.
        """
        deadline = time.monotonic() + timeout
        scanned = since
        with self._changed:
            while True:
                for line in self._lines[scanned:]:
                    if line.event is not None and _matches(line.event, name, match):
                        return line.event
                scanned = len(self._lines)
                if self._output_closed():
                    raise AssertionError(
                        f"bridge exited with code {self._exit_code()} before event {name!r} "
                        f"{match}\n{self.output_tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out after {timeout:g} s waiting for event {name!r} {match}\n"
                        f"{self.output_tail()}"
                    )
                self._changed.wait(remaining)

    def stop(self, signal: int = SIGTERM, timeout: float = 15.0) -> int:
        """Send `signal` (SIGTERM by default), wait for the exit and return its code.

        A daemon still running after `timeout` is killed and the test fails.
        """
        if self._proc.poll() is None:
            self._proc.send_signal(signal)
        return self.wait(timeout)

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for an exit already under way (a signal sent earlier) and
        return its code; a second signal would be a forced exit.

        A daemon still running after `timeout` is killed and the test fails.
        """
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"bridge did not exit within {timeout:g} s; killed\n{self.output_tail()}"
            ) from None
        self._join_readers()
        return code

    def send_signal(self, signal: int) -> None:
        """Deliver `signal` (SIGHUP for a reload) without waiting for anything."""
        self._proc.send_signal(signal)

    def kill(self) -> int:
        """SIGKILL, as a power cut or the OOM killer would; return the exit code."""
        if self._proc.poll() is None:
            self._proc.kill()
        code = self._proc.wait()
        self._join_readers()
        return code

    def output_tail(self, count: int = TAIL_LINES) -> str:
        """The last `count` output lines, for failure messages."""
        return "\n".join(f"[{line.stream}] {line.text}" for line in self.lines[-count:])

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._proc.poll() is None:
            self.stop()
        else:
            self._join_readers()

    def _read(self, stream: str, pipe: IO[str]) -> None:
        for raw in pipe:
            line = _parse(stream, raw)
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        pipe.close()
        with self._changed:
            self._open_streams -= 1
            self._changed.notify_all()

    def _output_closed(self) -> bool:
        """Both pipes at end of file: the daemon is exiting, all its output is in."""
        with self._changed:
            return self._open_streams == 0

    def _exit_code(self) -> int | None:
        """The exit code of a daemon whose output has ended, once it is reaped."""
        try:
            return self._proc.wait(5)
        except subprocess.TimeoutExpired:
            return None

    def _join_readers(self) -> None:
        for reader in self._readers:
            reader.join(timeout=5)
