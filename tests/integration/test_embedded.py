"""The zero-setup default: the embedded amqtt broker, and clear start-up errors."""

from __future__ import annotations

import json
import socket

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, free_port, kafka_read, publish_many, wait_until


def test_embedded_broker_carries_telemetry_to_kafka(setup: BridgeSetup) -> None:
    port = free_port()
    path = setup.config(mqtt_url=f"mqtt://127.0.0.1:{port}", mqtt_extra='embedded = "always"')
    with BridgeProcess(path) as bridge:
        started = bridge.wait_for_event("mqtt.embedded_broker_started", timeout=30)
        assert started["bind"] == f"127.0.0.1:{port}"
        bridge.wait_for_event("bridge.ready", timeout=30)
        payload = json.dumps({"schema_version": 1, "metrics": {"t": 1}}).encode()
        publish_many(f"mqtt://127.0.0.1:{port}", [("tenant/t1/device/E1/telemetry", payload, 1)])
        (record,) = kafka_read(setup.tansu.bootstrap, setup.clean, expected=1)
        assert bridge.stop() == 0
    assert record.key == b"t1:E1"


def test_taken_listen_port_is_a_clear_error(setup: BridgeSetup) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", setup.listen_port))
        squatter.listen()
        bridge = BridgeProcess(setup.config())
        code = wait_until(lambda: bridge.returncode, 30, "the daemon to exit")
    assert code == 1
    text = bridge.output_tail(30)
    assert f"127.0.0.1:{setup.listen_port}" in text
    assert "Traceback" not in text
