"""What a benchmark result needs beside its numbers: the machine, the date, the
commit, and where each process's CPU and memory went during a measurement.

Linux only (``/proc``), like the rest of the bench: mosquitto and Tansu are
Linux binaries here.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

#: Units of the CPU times in /proc.
TICKS = os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, str]:
    """nproc, CPU model, memory, kernel, date and git commit of this run."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    repo = Path(__file__).resolve().parents[1]
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    load = os.getloadavg()[0]
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": (commit or "unknown") + (" (with uncommitted changes)" if dirty else ""),
        "load_before": f"{load:.2f}",
    }


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float:
    """Resident set size now."""
    return _status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int) -> float:
    """The process's high-water mark of resident memory (the kernel's VmHWM)."""
    return _status_kib(pid, "VmHWM") / 1024


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time so far of a process (all its threads, exited
    ones included) or of one of its threads."""
    where = f"/proc/{pid}" if thread is None else f"/proc/{pid}/task/{thread}"
    fields = Path(f"{where}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class CpuWindow:
    """CPU used by named processes between :meth:`start` and :meth:`stop`, as a
    share of one core (1.0 = one core busy all the time)."""

    pids: dict[str, list[int]]

    def start(self, now: float) -> None:
        self._t0 = now
        self._c0 = {name: self._total(pids) for name, pids in self.pids.items()}

    def stop(self, now: float) -> dict[str, float]:
        span = now - self._t0
        return {
            name: round((self._total(pids) - self._c0[name]) / span, 2)
            for name, pids in self.pids.items()
        }

    @staticmethod
    def _total(pids: list[int]) -> float:
        total = 0.0
        for pid in pids:
            with contextlib.suppress(FileNotFoundError):  # it already exited
                total += cpu_seconds(pid)
        return total
