"""The stream through the real daemon: MQTT in, Kafka, and out to a WebSocket
and an SSE client of `python -m bridge run`."""

from __future__ import annotations

import json
import re
import urllib.request
from functools import partial
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.integration.conftest import BridgeSetup
from tests.integration.test_stream_clients import (
    ISO_MS,
    SECRET,
    SseClient,
    client_token,
    create_topic,
    next_json,
    telemetry,
)
from tests.support import BridgeProcess, kafka_read, publish_many, write_config

PAYLOAD = {
    "schema_version": 1,
    "device": "DEV-001",
    "metrics": {"temperature": 23.5, "door_open": False},
    "ts": "2026-02-25T14:00:00Z",
}


def _config(setup: BridgeSetup) -> Any:
    return write_config(
        setup.workdir,
        f"""
        listen = "127.0.0.1:{setup.listen_port}"
        alarms_topic = "alarms.{setup.unique}"

        [mqtt]
        url = "{setup.mosquitto.url}"
        client_id = "bridge-{setup.unique}"

        [kafka]
        bootstrap = "{setup.tansu.bootstrap}"

        [stream]
        topics = ["{setup.clean}"]
        session_timeout_ms = 1500

        [spool]
        path = "{setup.workdir / "spool"}"

        [[mappings]]
        name = "telemetry"
        [mappings.kafka]
        clean_topic = "{setup.clean}"
        raw_topic = "{setup.raw}"
        dead_letter_topic = "{setup.dlq}"
        """,
    )


def stream_status(port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/stream/status"
    with urllib.request.urlopen(url, timeout=5) as response:
        status: dict[str, Any] = json.load(response)
    return status


@pytest.mark.timeout(90)
async def test_mqtt_publish_reaches_websocket_and_sse_with_the_exact_envelope(
    setup: BridgeSetup,
) -> None:
    create_topic(setup.tansu.bootstrap, setup.clean)
    bridge = BridgeProcess(_config(setup), env={"EDGE_BRIDGE_JWT_SECRET": SECRET})
    try:
        await trio.to_thread.run_sync(partial(bridge.wait_for_event, "bridge.ready", timeout=30))
        await trio.to_thread.run_sync(
            partial(bridge.wait_for_event, "stream.kafka_state", timeout=30, state="ok")
        )
        port = setup.listen_port
        # No client yet: the stream's consumer reads nothing.
        await trio.to_thread.run_sync(
            partial(bridge.wait_for_event, "stream.kafka_paused", timeout=30)
        )
        assert (await trio.to_thread.run_sync(stream_status, port))["kafka_paused"] is True
        url = f"ws://127.0.0.1:{port}/ws/telemetry/stream/?token={client_token('t1')}"
        async with open_websocket_url(url) as ws:
            assert (await next_json(ws))["type"] == "connected"
            await trio.to_thread.run_sync(
                partial(bridge.wait_for_event, "stream.kafka_resumed", timeout=20)
            )
            assert "kafka_paused" not in await trio.to_thread.run_sync(stream_status, port)
            sse = await SseClient.open(
                port, "/sse/telemetry/stream/", [("authorization", f"Bearer {client_token('t1')}")]
            )
            assert sse.status == 200
            assert (await sse.next_message()).json()["type"] == "connected"

            mqtt_topic = "tenant/t1/device/DEV-001/telemetry"
            await trio.to_thread.run_sync(
                publish_many, setup.mosquitto.url, [(mqtt_topic, json.dumps(PAYLOAD).encode(), 1)]
            )
            over_ws = await telemetry(ws, 2, timeout=20)
            over_sse = [m.json() for m in await sse.telemetry(2, timeout=20)]
            await sse.aclose()

            code = await trio.to_thread.run_sync(bridge.stop)
            with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
                await ws.get_message()
    finally:
        if bridge.returncode is None:
            bridge.kill()
    assert code == 0
    assert closed.value.reason is not None and closed.value.reason.code == 1001

    stored = {
        f"{r.topic}:{r.partition}:{r.offset}": r.json()
        for r in kafka_read(setup.tansu.bootstrap, setup.clean, expected=2)
    }
    for events in (over_ws, over_sse):
        assert sorted(e["data"]["metric"] for e in events) == ["door_open", "temperature"]
        for event in events:
            assert re.match(ISO_MS, event.pop("sent_at"))
            assert event == {
                "event_id": event["event_id"],
                "type": "telemetry.update",
                "schema_version": 1,
                "data": stored[event["event_id"]],
            }
    assert {e["event_id"] for e in over_ws} == set(stored) == {e["event_id"] for e in over_sse}
    temperature = next(e["data"] for e in over_ws if e["data"]["metric"] == "temperature")
    assert temperature["tenant"] == "t1" and temperature["value"] == 23.5


@pytest.mark.timeout(90)
async def test_edge_local_source_streams_without_reading_kafka(setup: BridgeSetup) -> None:
    """``stream.source = "local"``: the ingest hands its clean records to the
    hub directly, so dashboards on the gateway see them with no Kafka round trip."""
    config = _config(setup)
    config.write_text(config.read_text().replace("[stream]\n", '[stream]\nsource = "local"\n'))
    bridge = BridgeProcess(config, env={"EDGE_BRIDGE_JWT_SECRET": SECRET})
    try:
        await trio.to_thread.run_sync(partial(bridge.wait_for_event, "bridge.ready", timeout=30))
        url = (
            f"ws://127.0.0.1:{setup.listen_port}/ws/telemetry/stream/"
            f"?token={client_token('t1')}&metric=temperature"
        )
        async with open_websocket_url(url) as ws:
            assert (await next_json(ws))["type"] == "connected"
            mqtt_topic = "tenant/t1/device/DEV-001/telemetry"
            await trio.to_thread.run_sync(
                publish_many, setup.mosquitto.url, [(mqtt_topic, json.dumps(PAYLOAD).encode(), 1)]
            )
            (event,) = await telemetry(ws, 1, timeout=20)
        assert await trio.to_thread.run_sync(bridge.stop) == 0
    finally:
        if bridge.returncode is None:
            bridge.kill()
    assert event["type"] == "telemetry.update"
    data = event["data"]
    assert (data["tenant"], data["device_serial_id"], data["metric"], data["value"]) == (
        "t1",
        "DEV-001",
        "temperature",
        23.5,
    )
    assert not bridge.events("stream.kafka_consumer_started")
