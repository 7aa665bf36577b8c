"""Fixtures for tests that run the real daemon: a config naming this test's own
brokers, Kafka topics and listen port."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import Mosquitto, Tansu, free_port, write_config

STREAM_SESSION_MS = 1500
"""stream.session_timeout_ms in the test config: the stream's consumers join
their group sooner, and a daemon stops about 2 s sooner (closing a consumer
waits for its next heartbeat, a third of the session: 2 s by default)."""


@dataclass
class BridgeSetup:
    """What one test's daemon talks to."""

    mosquitto: Mosquitto
    tansu: Tansu
    unique: str
    listen_port: int
    workdir: Path

    @property
    def clean(self) -> str:
        return f"clean.{self.unique}"

    @property
    def raw(self) -> str:
        return f"raw.{self.unique}"

    @property
    def dlq(self) -> str:
        return f"dlq.{self.unique}"

    @property
    def telemetry_mapping(self) -> str:
        """The default telemetry mapping, writing to this test's topics (TOML)."""
        return f"""
[[mappings]]
name = "telemetry"
[mappings.kafka]
clean_topic = "{self.clean}"
raw_topic = "{self.raw}"
dead_letter_topic = "{self.dlq}"
"""

    def config(
        self,
        extra: str = "",
        mappings: str | None = None,
        *,
        mqtt_url: str | None = None,
        mqtt_extra: str = "",
        kafka_extra: str = "",
    ) -> Path:
        """A main config for this test; ``extra`` is appended TOML (tables),
        ``mappings`` replaces the default telemetry mapping, ``mqtt_url`` and
        ``mqtt_extra`` (keys) change the [mqtt] table, ``kafka_extra`` (keys)
        the [kafka] table."""
        if mappings is None:
            mappings = self.telemetry_mapping
        text = f"""
listen = "127.0.0.1:{self.listen_port}"
alarms_topic = "alarms.{self.unique}"

[mqtt]
url = "{mqtt_url or self.mosquitto.url}"
client_id = "bridge-{self.unique}"
{mqtt_extra}

[kafka]
bootstrap = "{self.tansu.bootstrap}"
{kafka_extra}

[stream]
topics = ["{self.clean}"]
session_timeout_ms = {STREAM_SESSION_MS}

[spool]
path = "{self.workdir / "spool"}"
{extra}
{mappings}
"""
        return write_config(self.workdir, text)


@pytest.fixture
def setup(mosquitto: Mosquitto, tansu: Tansu, unique: str, tmp_path: Path) -> BridgeSetup:
    return BridgeSetup(mosquitto, tansu, unique, free_port(), tmp_path)


ConfigFactory = Callable[..., Path]

QUICK_STOP = "shutdown_flush_s = 1"
"""[kafka] key for a test that stops the daemon while Kafka cannot be reached:
a 1 s flush deadline instead of the default 10 s, when the wait is not what
the test is about."""
