"""What the stream promises, through the real daemon: hostile clients get
their documented answers and nobody else notices; an SSE client resuming
right after a restart of the daemon misses nothing; records delivered from
the edge-local source are not delivered again when Kafka brings them back."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from tests.integration.conftest import BridgeSetup
from tests.integration.test_stream_clients import (
    SECRET,
    SseClient,
    SseMessage,
    client_token,
    create_topic,
    next_json,
    telemetry,
)
from tests.integration.test_stream_http import request
from tests.integration.test_stream_ws import close_code
from tests.support import BridgeProcess, Tansu, free_port, kafka_read, publish_many, wait_until
from tests.support.sequenced import set_kafka
from tests.support.tcp_proxy import TcpProxy

SSE = "/sse/telemetry/stream/"
WS = "/ws/telemetry/stream/"
ENV = {"EDGE_BRIDGE_JWT_SECRET": SECRET}


def stream_daemon_config(setup: BridgeSetup, stream: str = "") -> Path:
    """This test's config (with its short group session: a fast assignment) and
    ``stream`` keys added to [stream]."""
    config = setup.config()
    text = config.read_text().replace("[stream]\n", f"[stream]\n{stream}")
    config.write_text(text)
    return config


async def started(config: Path, *, kafka_ok: bool = True) -> BridgeProcess:
    bridge = BridgeProcess(config, env=ENV)
    try:
        await trio.to_thread.run_sync(partial(bridge.wait_for_event, "bridge.ready", timeout=30))
        if kafka_ok:
            await kafka_feeding(bridge)
    except BaseException:
        bridge.kill()
        raise
    return bridge


async def kafka_feeding(bridge: BridgeProcess, since: int = 0, state: str = "ok") -> None:
    wait = partial(bridge.wait_for_event, "stream.kafka_state", 30, since=since, state=state)
    await trio.to_thread.run_sync(wait)


def reading(device: str, value: float, metric: str = "temperature") -> tuple[str, bytes, int]:
    """One MQTT message with one metric, QoS 1, for tenant t1."""
    payload = {"schema_version": 1, "device": device, "metrics": {metric: value}}
    payload["ts"] = "2026-02-25T14:00:00.250Z"
    return (f"tenant/t1/device/{device}/telemetry", json.dumps(payload).encode(), 1)


async def publish(setup: BridgeSetup, messages: Sequence[tuple[str, bytes, int]]) -> None:
    await trio.to_thread.run_sync(publish_many, setup.mosquitto.url, list(messages))


async def sse(port: int, headers: Sequence[tuple[str, str]] = (), **query: str) -> SseClient:
    target = SSE + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    bearer = [("authorization", f"Bearer {client_token('t1')}"), *headers]
    client = await SseClient.open(port, target, bearer)
    if client.status == 200:
        assert (await client.next_message()).json()["type"] == "connected"
    return client


def event_ids(messages: list[SseMessage]) -> list[str]:
    return [m.json()["event_id"] for m in messages]


# --------------------------------------------------------------------------- items 3, 9, 10, 11
@pytest.mark.timeout(120)
async def test_hostile_stream_clients_get_documented_answers_and_the_daemon_serves_on(
    setup: BridgeSetup,
) -> None:
    create_topic(setup.tansu.bootstrap, setup.clean)
    config = stream_daemon_config(setup, 'allow_origins = ["https://dash.example"]\n')
    bridge = await started(config)
    port = setup.listen_port
    try:
        ws_url = f"ws://127.0.0.1:{port}{WS}?token={client_token('t1')}"
        async with open_websocket_url(ws_url) as ws:
            assert (await next_json(ws))["type"] == "connected"
            # A WebSocket action nested 2,000 levels deep: an error reply, still open.
            await ws.send_message(
                '{"action": "subscribe", "devices": ' + "[" * 2000 + "]" * 2000 + "}"
            )
            assert (await next_json(ws))["type"] == "error"
            await ws.send_message(b"\xff\x00 not even text")
            assert (await next_json(ws))["type"] == "error"
            await ws.send_message(json.dumps({"action": "subscribe", "device": "DEV-OK"}))
            assert (await next_json(ws))["type"] == "subscribed"

            # Cursors it cannot use: an error event at once (a partition that
            # does not exist would otherwise hold a replay slot 30 s), then live.
            bad = [
                f"{setup.clean}@0:0,1:0,2:0,3:0,7:0",
                f"{setup.clean}@2147483648:0",
                f"{setup.clean}@0:" + "1" * 5000,
                f"{setup.clean}@%C2%B2:0",
            ]
            with trio.fail_after(15):
                for cursor in [bad[0], *bad]:
                    client = await sse(port, last_event_id=cursor)
                    notice = (await client.next_message()).json()
                    assert notice["type"] == "error" and "Last-Event-ID" in notice["message"]
                    await client.aclose()

            # Origins: refused on the upgrade and for SSE, before counting; preflight answered.
            code, _ = await close_code(ws_url, origin="https://evil.example")
            assert code == 4003
            refused = await sse(port, [("origin", "https://evil.example")])
            assert refused.status == 403
            await refused.aclose()
            dash = [("origin", "https://dash.example"), ("access-control-request-method", "GET")]
            preflight = await request(port, "OPTIONS", SSE, dash)
            assert preflight.status_code == 204
            allowed = await sse(port, [("origin", "https://dash.example")])
            assert allowed.headers["access-control-allow-origin"] == "https://dash.example"
            await allowed.aclose()

            # A 40 KB request head in one write: 431.
            sock = await trio.open_tcp_stream("127.0.0.1", port)
            await sock.send_all(
                b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 40_000 + b"\r\n\r\n"
            )
            with trio.fail_after(10):
                assert (await sock.receive_some(65536)).startswith(b"HTTP/1.1 431 ")
            await sock.aclose()

            # The same process serves on: the subscribed client gets its device.
            await publish(setup, [reading("DEV-OK", 1.0)])
            (event,) = await telemetry(ws, 1, timeout=20)
            assert event["data"]["device_serial_id"] == "DEV-OK"
        assert bridge.returncode is None
        assert not bridge.events("stream.websocket_failed")
        assert not bridge.events("stream.sse_resume_failed")
        assert not bridge.events("http.handler_failed")
        assert await trio.to_thread.run_sync(bridge.stop) == 0
    finally:
        bridge.kill()


# --------------------------------------------------------------------------- item 7
@pytest.mark.timeout(150)
async def test_sse_resume_right_after_a_daemon_restart_gets_every_record_in_between(
    setup: BridgeSetup,
) -> None:
    """The client sees some records, the daemon stops; records are published
    while it is down (the broker keeps them for its session) and while it
    starts again.  The client reconnects with its last id as soon as the
    restarted daemon listens, before the stream's consumer has partitions:
    it gets every record after its cursor once, then live ones."""
    create_topic(setup.tansu.bootstrap, setup.clean)
    config = stream_daemon_config(setup)
    port = setup.listen_port
    first = await started(config)
    try:
        client = await sse(port)
        await publish(setup, [reading(f"DEV-{i}", float(i), "before") for i in range(10)])
        seen = await client.telemetry(10, timeout=20)
        await client.aclose()
        assert await trio.to_thread.run_sync(first.stop) == 0
    finally:
        first.kill()
    cursor = seen[-1].id
    assert cursor is not None

    await publish(setup, [reading(f"DEV-{i}", float(i), "while_down") for i in range(30)])
    second = BridgeProcess(config, env=ENV)
    try:
        listening = partial(second.wait_for_event, "stream.listening", timeout=30)
        await trio.to_thread.run_sync(listening)
        resumed = await sse(port, [("last-event-id", cursor)])
        async with trio.open_nursery() as nursery:
            more = [reading(f"DEV-{i}", float(i), "restarting") for i in range(30)]
            nursery.start_soon(publish, setup, more)
            got = await resumed.telemetry(60, timeout=60)
        await publish(setup, [reading("DEV-0", 0.0, "marker")])
        (marker,) = await resumed.telemetry(1, timeout=20)
        await resumed.aclose()
        assert second.events("stream.kafka_state", state="ok")
        assert await trio.to_thread.run_sync(second.stop) == 0
    finally:
        second.kill()
    assert marker.json()["data"]["metric"] == "marker"
    stored = await trio.to_thread.run_sync(kafka_read, setup.tansu.bootstrap, setup.clean, 71)
    expected = {
        f"{r.topic}:{r.partition}:{r.offset}"
        for r in stored
        if r.json()["metric"] in ("while_down", "restarting")
    }
    assert len(expected) == 60
    assert Counter(event_ids(got)) == Counter(expected)


# --------------------------------------------------------------------------- item 8
def stream_position(port: int) -> int:
    """How many records the daemon's stream has read, from its status."""
    url = f"http://127.0.0.1:{port}/api/stream/status"
    with urllib.request.urlopen(url, timeout=5) as response:
        status: dict[str, Any] = json.load(response)
    return sum(p["position"] or 0 for p in status["partitions"])


@pytest.mark.timeout(150)
async def test_byte_identical_readings_from_the_edge_local_source_arrive_once(
    setup: BridgeSetup, tmp_path: Path
) -> None:
    """Kafka is cut off (through a proxy, so it keeps its data): the daemon
    streams what it ingests itself.  Pairs of identical readings (same device,
    metric, value, millisecond) make byte-identical records.  When Kafka is
    back the spool delivers them and the stream reads them again: none may be
    delivered a second time."""
    proxy_port = free_port()
    with Tansu(tmp_path / "kafka", advertised_port=proxy_port) as broker:
        bootstrap = f"127.0.0.1:{proxy_port}"
        async with trio.open_nursery() as nursery:
            proxy = TcpProxy(proxy_port, broker.host, broker.port)
            await nursery.start(proxy.run)
            await trio.to_thread.run_sync(create_topic, bootstrap, setup.clean)
            config = set_kafka(stream_daemon_config(setup), bootstrap=bootstrap)
            set_kafka(config, delivery_timeout_ms=3000)
            bridge = await started(config)
            try:
                await twins_once(setup, bridge, proxy, bootstrap)
                assert await trio.to_thread.run_sync(bridge.stop) == 0
            finally:
                bridge.kill()
            nursery.cancel_scope.cancel()


async def twins_once(
    setup: BridgeSetup, bridge: BridgeProcess, proxy: TcpProxy, bootstrap: str
) -> None:
    port = setup.listen_port
    url = f"ws://127.0.0.1:{port}{WS}?token={client_token('t1')}"
    async with open_websocket_url(url) as ws:
        assert (await next_json(ws))["type"] == "connected"
        mark = bridge.mark()
        proxy.cut()
        await kafka_feeding(bridge, mark, "down")
        pairs = [reading("DEV-TWIN", float(i)) for i in range(10) for _ in range(2)]
        await publish(setup, pairs)
        local = await telemetry(ws, len(pairs), timeout=30)
        assert all(e["event_id"].startswith("local:") for e in local)
        twins = Counter(json.dumps(e["data"], sort_keys=True) for e in local)
        assert max(twins.values()) == 2, "no byte-identical pair: nothing was tested"

        mark = bridge.mark()
        proxy.restore()
        await kafka_feeding(bridge, mark)
        stored = await trio.to_thread.run_sync(kafka_read, bootstrap, setup.clean, len(pairs))
        assert len(stored) == len(pairs)
        read_all = partial(wait_until, lambda: stream_position(port) >= len(pairs), 30, "reading")
        await trio.to_thread.run_sync(read_all)
        await publish(setup, [reading("DEV-MARK", 0.0)])
        # Nothing came back from Kafka: the next event is the marker.
        (marker,) = await telemetry(ws, 1, timeout=30)
        assert marker["data"]["device_serial_id"] == "DEV-MARK"
        assert marker["event_id"].startswith(f"{setup.clean}:")
