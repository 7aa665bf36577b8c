"""broker_config/amqtt.yaml run for real: the embedded broker started from it
(through the daemon's own launcher) with a port and a password file of this
test, then logged into and used as the comments in the file promise."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import trio
import yaml  # type: ignore[import-untyped]  # amqtt depends on PyYAML
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from pwdlib import PasswordHash

from bridge.io.embedded_broker import run_embedded_broker
from tests.support import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
USERS = {"sensor": "sensor-secret", "edge-bridge": "bridge-secret"}
TELEMETRY = "tenant/t1/device/DEV-001/telemetry"


def example_config(tmp_path: Path, port: int) -> Path:
    """The example with this test's port and password file swapped in."""
    config: dict[str, Any] = yaml.safe_load((REPO / "broker_config" / "amqtt.yaml").read_text())
    hasher = PasswordHash.recommended()
    passwords = tmp_path / "amqtt-passwd"
    passwords.write_text("".join(f"{u}:{hasher.hash(p)}\n" for u, p in USERS.items()))
    config["listeners"]["default"]["bind"] = f"127.0.0.1:{port}"
    auth = config["plugins"]["amqtt.plugins.authentication.FileAuthPlugin"]
    auth["password_file"] = str(passwords)
    path = tmp_path / "amqtt.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Client:
    """A paho client on its own thread that records CONNACK, SUBACK and messages."""

    def __init__(self, port: int, username: str | None, password: str | None) -> None:
        self.connack: ReasonCode | None = None
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.paho = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        if username is not None:
            self.paho.username_pw_set(username, password)
        self.paho.on_connect = self._on_connect
        self.paho.on_subscribe = lambda _c, _u, mid, codes, _p: self.subacks.update({mid: codes})
        self.paho.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.paho.connect("127.0.0.1", port)
        # Read the CONNACK on this thread: paho's own thread would wait out a
        # reconnect delay before stopping after a refusal.
        deadline = time.monotonic() + 10
        while self.connack is None:
            assert time.monotonic() < deadline, "no CONNACK within 10 s"
            self.paho.loop(0.05)
        if not self.refused:
            self.paho.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.connack = reason

    @property
    def refused(self) -> bool:
        return self.connack is not None and self.connack.is_failure

    def subscribe(self, topic: str) -> bool:
        """Whether the broker granted the subscription."""
        _, mid = self.paho.subscribe(topic, 1)
        assert mid is not None, f"subscribe to {topic} not sent"
        codes = wait_until(lambda: self.subacks.get(mid), 10, f"SUBACK for {topic}")
        return not any(code.is_failure for code in codes)

    def close(self) -> None:
        self.paho.disconnect()
        if not self.refused:
            self.paho.loop_stop()


def exercise(port: int) -> None:
    """Logins, subscriptions and one message, as the file's comments describe."""
    for username, password in [(None, None), ("sensor", "wrong"), ("nobody", "x")]:
        client = Client(port, username, password)
        client.close()
        assert client.refused, f"{username!r} with {password!r} was let in"
    bridge = Client(port, "edge-bridge", USERS["edge-bridge"])
    sensor = Client(port, "sensor", USERS["sensor"])
    try:
        assert not bridge.refused and not sensor.refused
        assert bridge.subscribe("tenant/+/device/+/telemetry")
        assert not bridge.subscribe("#"), "the ACL should refuse a subscription to everything"
        assert sensor.subscribe("tenant/t1/device/DEV-001/command")
        sensor.paho.publish(TELEMETRY, b'{"metrics": {"t": 1}}', qos=1).wait_for_publish(10)
        wait_until(lambda: bridge.messages, 10, "the sensor's message at the bridge")
        assert bridge.messages == [(TELEMETRY, b'{"metrics": {"t": 1}}')]
    finally:
        bridge.close()
        sensor.close()


async def test_the_example_amqtt_config_runs_as_documented(tmp_path: Path) -> None:
    port = free_port()
    config = example_config(tmp_path, port)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_embedded_broker, "127.0.0.1", port, str(config))
        await trio.to_thread.run_sync(exercise, port)
        nursery.cancel_scope.cancel()
