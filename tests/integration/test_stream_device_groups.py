"""Device groups of the registry through the real daemon: a ``group`` filter
(query and live action) selects the devices of a group, and a reload that
moves a device between groups changes what an open connection receives."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.integration.conftest import BridgeSetup
from tests.integration.test_stream_examples import ensure_topic, publish, receive
from tests.support import BridgeProcess

pytestmark = pytest.mark.timeout(120)


def registry(pumps: list[str]) -> str:
    lines = []
    for device in ("P1", "P2", "F1"):
        groups = ["pumps"] if device in pumps else ["fans"]
        lines += [f"[devices.t1.{device}]", f"groups = {json.dumps(groups)}"]
    return "\n".join(lines)


def config(setup: BridgeSetup, pumps: list[str]) -> Any:
    return setup.config(
        f"""
[[streams]]
name = "plant"
auth = "none"
websocket_path = "/plant"
envelope = {{ kind = "message" }}
source = {{ topics = ["{setup.raw}"], read = "mapping", mapping = "telemetry" }}

[[streams]]
name = "raw"
auth = "none"
websocket_path = "/raw"
send_welcome = false
envelope = {{ kind = "passthrough" }}
source = {{ topics = ["{setup.raw}"], read = "mapping", mapping = "telemetry" }}

{registry(pumps)}
"""
    )


def next_telemetry(ws: ClientConnection) -> Any:
    while True:
        message = receive(ws)
        if message.get("type") == "telemetry":
            return message


def test_group_filter_follows_the_registry(setup: BridgeSetup) -> None:
    ensure_topic(setup.tansu.bootstrap, setup.raw)
    with BridgeProcess(config(setup, ["P1"])) as bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        bridge.wait_for_event("stream.kafka_state", timeout=30, state="ok")
        url = f"ws://127.0.0.1:{setup.listen_port}/plant"
        # Two endpoints on one source: one consumer.
        assert len(bridge.events("stream.kafka_consumer_started")) == 1
        raw_url = f"ws://127.0.0.1:{setup.listen_port}/raw?device=F1"
        with connect(url + "?group=pumps") as pumps, connect(url) as live, connect(raw_url) as raw:
            assert receive(pumps)["filters"]["groups"] == ["pumps"]
            receive(live)
            live.send(json.dumps({"action": "subscribe", "group": "fans"}))
            assert receive(live)["type"] == "subscribed"
            for device in ("P2", "P1"):
                publish(setup, "t1", device, {"flow": 1})
            assert next_telemetry(pumps)["device_id"] == "P1"
            assert next_telemetry(live)["device_id"] == "P2"

            config(setup, ["P1", "P2"])  # P2 moves to pumps
            mark = bridge.mark()
            bridge.send_signal(signal.SIGHUP)
            bridge.wait_for_event("bridge.reloaded", timeout=15, since=mark)
            publish(setup, "t1", "P2", {"flow": 2})
            publish(setup, "t1", "F1", {"flow": 3})
            moved = next_telemetry(pumps)
            assert (moved["device_id"], moved["metrics"]) == ("P2", {"flow": 2})
            assert next_telemetry(live)["device_id"] == "F1"
            # The other endpoint's contract: the MQTT payload as it was sent.
            assert receive(raw) == {"schema_version": 1, "device": "F1", "metrics": {"flow": 3}}
