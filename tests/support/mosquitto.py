"""A private mosquitto broker per test, from broker_config/mosquitto-test.conf."""

from __future__ import annotations

import os
import pwd
import shutil
import string
from pathlib import Path

from .process import ServerProcess
from .waiting import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_CONFIG = REPO_ROOT / "broker_config" / "mosquitto-test.conf"


def mosquitto_binary() -> str:
    """The mosquitto executable; Debian installs it in /usr/sbin, often not on PATH."""
    return shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Mosquitto(ServerProcess):
    """A mosquitto listening on 127.0.0.1 on a free port, persisting under `workdir`.

    restart() keeps the port and the persistence database, so a test can take
    the broker away mid-stream and bring it back with its sessions and queued
    QoS 1 messages, the way a gateway reboot does. stop() is a clean shutdown,
    during which mosquitto writes that database; kill() (SIGKILL) loses
    whatever it had not saved.
    """

    def __init__(self, workdir: Path, extra_config: str = "") -> None:
        """``extra_config`` is appended to the test config: listener options such
        as TLS files or a password file apply to its one listener."""
        host, port = "127.0.0.1", free_port()
        data_dir = workdir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "mosquitto.conf"
        self.config_path.write_text(
            string.Template(TEST_CONFIG.read_text()).substitute(
                port=port,
                persistence_dir=data_dir,
                user=pwd.getpwuid(os.geteuid()).pw_name,
            )
            + extra_config
        )
        super().__init__(
            "mosquitto",
            [mosquitto_binary(), "-c", str(self.config_path)],
            workdir / "mosquitto.log",
            host,
            port,
        )

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def restart(self, timeout: float = 10.0) -> None:
        """Stop cleanly and start again on the same port with the same database."""
        self.stop(timeout)
        self.start(timeout)
