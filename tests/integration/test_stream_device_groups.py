"""Configured endpoints through the real daemon: device groups of the
registry (a ``group`` filter, query and live action, that follows a reload),
two endpoints sharing one consumer, and an SSE client of an endpoint resuming
with its Kafka cursor in that endpoint's envelope."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer
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
sse_path = "/plant/sse"
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


@contextmanager
def running(setup: BridgeSetup) -> Iterator[BridgeProcess]:
    """The daemon with P1 in the pumps group, once its stream consumer reads."""
    ensure_topic(setup.tansu.bootstrap, setup.raw)
    with BridgeProcess(config(setup, ["P1"])) as bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        bridge.wait_for_event("stream.kafka_state", timeout=30, state="ok")
        yield bridge


def test_group_filter_follows_the_registry(setup: BridgeSetup) -> None:
    with running(setup) as bridge:
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


def sse_events(response: httpx.Response, count: int) -> list[tuple[str, Any]]:
    """The next ``count`` events with an id: (id, data)."""
    found: list[tuple[str, Any]] = []
    event_id = None
    for line in response.iter_lines():
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: ") and event_id is not None:
            found.append((event_id, json.loads(line[6:])))
            event_id = None
            if len(found) == count:
                break
    return found


def test_sse_resumes_in_the_endpoints_envelope(setup: BridgeSetup) -> None:
    with running(setup) as bridge:
        url = f"http://127.0.0.1:{setup.listen_port}/plant/sse?device=P1&metric=flow"
        with httpx.stream("GET", url, timeout=20) as response:
            publish(setup, "t1", "P1", {"flow": 1, "pressure": 9})
            ((cursor, first),) = sse_events(response, 1)
        assert first["metrics"] == {"flow": 1}
        # A second client stays while the first is away: once it has seen the
        # two records, the live stream has passed them, so the first client's
        # resume must replay them from Kafka (otherwise they could reach it
        # live and the replay, the thing tested, would have nothing to do).
        with httpx.stream("GET", url, timeout=20) as watcher:
            for n in (2, 3):
                publish(setup, "t1", "P1", {"flow": n, "pressure": 9})
                publish(setup, "t1", "P2", {"flow": n})
            assert [e["metrics"] for _, e in sse_events(watcher, 2)] == [{"flow": 2}, {"flow": 3}]
        mark = bridge.mark()
        with httpx.stream("GET", url, headers={"Last-Event-ID": cursor}, timeout=20) as response:
            missed = sse_events(response, 2)
        bridge.wait_for_event("stream.sse_resumed", timeout=15, since=mark, events=2)
        assert [(e["device_id"], e["metrics"]) for _, e in missed] == [
            ("P1", {"flow": 2}),
            ("P1", {"flow": 3}),
        ]
        assert missed[0][0] != cursor


def test_start_at_earliest_reads_what_came_before(setup: BridgeSetup) -> None:
    topic = f"history.{setup.unique}"
    ensure_topic(setup.tansu.bootstrap, topic)
    producer = Producer({"bootstrap.servers": setup.tansu.bootstrap})
    producer.produce(topic, json.dumps({"id": "A", "n": 1}).encode(), key=b"A")
    assert producer.flush(20) == 0
    path = setup.config(
        f"""
[[streams]]
name = "history"
auth = "none"
websocket_path = "/history"
send_welcome = false
envelope = {{ kind = "passthrough" }}
filters = {{ metric = [] }}
source = {{ topics = ["{topic}"], read = "json", device = {{ field = "id" }}, start = "earliest" }}
"""
    )
    with BridgeProcess(path) as bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        with connect(f"ws://127.0.0.1:{setup.listen_port}/history") as ws:
            bridge.wait_for_event("stream.kafka_state", timeout=30, state="ok")
            # Assigned after the client connected: the old record is read.
            assert receive(ws) == {"id": "A", "n": 1}
