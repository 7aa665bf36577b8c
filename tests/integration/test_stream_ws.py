"""The WebSocket stream in-process: run_stream on real sockets, records produced
to a real Kafka broker (Tansu), clients speaking through trio-websocket."""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import msgspec
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url, wrap_client_stream

from bridge.core.settings import AuthSettings
from bridge.stream.service import StreamSettingsError
from tests.integration.test_stream_clients import (
    ISO_MS,
    Stream,
    clean_record,
    client_token,
    create_topic,
    next_json,
    produce,
    running_stream,
    stream_config,
    telemetry,
    token,
)
from tests.support import Tansu, async_wait_until, kafka_read


@pytest.fixture
def topic(tansu: Tansu, unique: str) -> str:
    name = f"clean.ws.{unique}"
    create_topic(tansu.bootstrap, name)
    return name


async def test_first_message_is_connected_then_the_exact_envelope(tansu: Tansu, topic: str) -> None:
    value = clean_record("t1", "DEV-001", "temperature", 23.5)
    async with (
        running_stream(stream_config(tansu.bootstrap, topic)) as stream,
        open_websocket_url(stream.ws_url(token=client_token("t1"))) as ws,
    ):
        assert await next_json(ws) == {
            "type": "connected",
            "tenant": "t1",
            "role": "client",
            "filters": {"tenant": "t1", "devices": None, "metrics": None},
        }
        produce(tansu.bootstrap, topic, [value])
        (event,) = await telemetry(ws, 1)

    (stored,) = kafka_read(tansu.bootstrap, topic, expected=1)
    assert re.match(ISO_MS, event.pop("sent_at"))
    assert event == {
        "event_id": f"{topic}:{stored.partition}:{stored.offset}",
        "type": "telemetry.update",
        "schema_version": 1,
        "data": json.loads(value),
    }


async def test_device_and_metric_filters_from_the_query(tansu: Tansu, topic: str) -> None:
    records = [
        clean_record("t1", device, metric)
        for device in ("DEV-1", "DEV-2", "DEV-3")
        for metric in ("temperature", "humidity")
    ]
    async with running_stream(stream_config(tansu.bootstrap, topic)) as stream:
        query = {"token": client_token("t1"), "device": "DEV-1,DEV-3", "metric": "humidity"}
        async with open_websocket_url(stream.ws_url(**query)) as ws:
            connected = await next_json(ws)
            assert connected["filters"] == {
                "tenant": "t1",
                "devices": ["DEV-1", "DEV-3"],
                "metrics": ["humidity"],
            }
            produce(tansu.bootstrap, topic, records)
            await stream.consumed(topic, len(records))
            got = await telemetry(ws, 2)
            # Nothing else is on its way: the next message is the answer to this.
            await ws.send_message('{"action": "clear_filters"}')
            assert (await next_json(ws))["type"] == "filters_cleared"

    assert sorted((e["data"]["device_serial_id"], e["data"]["metric"]) for e in got) == [
        ("DEV-1", "humidity"),
        ("DEV-3", "humidity"),
    ]


async def send_action(ws: Any, action: dict[str, Any]) -> dict[str, Any]:
    await ws.send_message(json.dumps(action))
    reply: dict[str, Any] = await next_json(ws)
    return reply


async def test_live_filter_changes_are_acknowledged_and_applied(tansu: Tansu, topic: str) -> None:
    async with (
        running_stream(stream_config(tansu.bootstrap, topic)) as stream,
        open_websocket_url(stream.ws_url(token=client_token("t1"))) as ws,
    ):
        await next_json(ws)
        reply = await send_action(ws, {"action": "subscribe", "device": "DEV-2"})
        assert reply == {
            "type": "subscribed",
            "devices": ["DEV-2"],
            "filters": {"tenant": "t1", "devices": ["DEV-2"], "metrics": None},
        }
        produce(tansu.bootstrap, topic, [clean_record("t1", d) for d in ("DEV-1", "DEV-2")])
        (only,) = await telemetry(ws, 1)
        assert only["data"]["device_serial_id"] == "DEV-2"

        reply = await send_action(ws, {"action": "subscribe", "devices": ["DEV-3", "DEV-4"]})
        assert reply["filters"]["devices"] == ["DEV-2", "DEV-3", "DEV-4"]
        reply = await send_action(ws, {"action": "unsubscribe", "device": "DEV-2"})
        assert reply["type"] == "unsubscribed"
        reply = await send_action(ws, {"action": "set_metrics", "metrics": ["humidity"]})
        assert reply == {
            "type": "metrics_updated",
            "filters": {"tenant": "t1", "devices": ["DEV-3", "DEV-4"], "metrics": ["humidity"]},
        }
        produce(
            tansu.bootstrap,
            topic,
            [
                clean_record("t1", "DEV-2", "humidity"),
                clean_record("t1", "DEV-3", "temperature"),
                clean_record("t1", "DEV-4", "humidity"),
            ],
        )
        (only,) = await telemetry(ws, 1)
        assert (only["data"]["device_serial_id"], only["data"]["metric"]) == ("DEV-4", "humidity")

        await ws.send_message("{not json")
        assert (await next_json(ws))["type"] == "error"
        await ws.send_message('{"action": "dance"}')
        error = await next_json(ws)
        assert error["type"] == "error" and "dance" in error["message"]
        await ws.send_message('{"action": "subscribe", "devices": ' + "[" * 2000 + "]" * 2000 + "}")
        error = await next_json(ws)
        assert error["type"] == "error" and "nested too deeply" in error["message"]

        reply = await send_action(ws, {"action": "clear_filters"})
        assert reply["type"] == "filters_cleared"
        produce(tansu.bootstrap, topic, [clean_record("t1", "DEV-9", "pressure")])
        (after,) = await telemetry(ws, 1)  # still open after the errors, all devices again
        assert after["data"]["device_serial_id"] == "DEV-9"


async def test_tenants_are_isolated_and_admins_see_across(tansu: Tansu, topic: str) -> None:
    records = [clean_record(t, f"DEV-{t}-{i}") for i in range(5) for t in ("t1", "t2", "t3")]
    async with running_stream(stream_config(tansu.bootstrap, topic)) as stream:  # noqa: SIM117
        async with (
            open_websocket_url(stream.ws_url(token=client_token("t1"))) as t1,
            open_websocket_url(stream.ws_url(token=client_token("t2"))) as t2,
            open_websocket_url(stream.ws_url(token=token(role="admin"))) as admin,
            open_websocket_url(stream.ws_url(token=token(role="admin"), tenant="t3")) as admin_t3,
            # An admin token with a tenant claim still sees every tenant.
            open_websocket_url(stream.ws_url(token=token(role="admin", tenant="t1"))) as admin2,
        ):
            assert (await next_json(t1))["tenant"] == "t1"
            assert (await next_json(admin))["tenant"] is None
            assert (await next_json(admin_t3))["tenant"] == "t3"
            assert (await next_json(admin2))["tenant"] is None
            await next_json(t2)
            produce(tansu.bootstrap, topic, records)
            await stream.consumed(topic, len(records))
            seen = {
                name: await telemetry(ws, count)
                for name, ws, count in (
                    ("t1", t1, 5),
                    ("t2", t2, 5),
                    ("admin", admin, 15),
                    ("admin_t3", admin_t3, 5),
                    ("admin2", admin2, 15),
                )
            }
            # Each got exactly its count: the marker below is the next thing they see.
            marker = clean_record("t1", "MARKER")
            produce(tansu.bootstrap, topic, [marker])
            (t1_marker,) = await telemetry(t1, 1)
            assert t1_marker["data"]["device_serial_id"] == "MARKER"

    assert {e["data"]["tenant"] for e in seen["t1"]} == {"t1"}
    assert {e["data"]["tenant"] for e in seen["t2"]} == {"t2"}
    assert {e["data"]["tenant"] for e in seen["admin_t3"]} == {"t3"}
    for name in ("admin", "admin2"):
        assert sorted(e["data"]["device_serial_id"] for e in seen[name]) == sorted(
            json.loads(r)["device_serial_id"] for r in records
        )


async def close_code(
    url: str, subprotocols: list[str] | None = None, origin: str | None = None
) -> tuple[int, str | None]:
    headers = [(b"origin", origin.encode())] if origin is not None else None
    async with open_websocket_url(url, subprotocols=subprotocols, extra_headers=headers) as ws:
        with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
            await ws.get_message()
    reason = closed.value.reason
    assert reason is not None
    return reason.code, reason.reason


@pytest.mark.parametrize(
    ("query", "code", "words"),
    [
        ({}, 4001, "missing token"),
        ({"token": "not-a-jwt"}, 4001, "invalid token"),
        ({"token": token(exp_in=-60, role="client", tenant="t1")}, 4001, "expired"),
        (
            {"token": token(secret="another-secret-0123456789abcdef!", role="admin")},
            4001,
            "Signature",
        ),
        ({"token": token(role="viewer", tenant="t1")}, 4003, "role 'viewer'"),
        ({"token": token(role="client")}, 4003, "tenant claim"),
        ({"token": client_token("t1"), "tenant": "t2"}, 4003, "'t2' is not allowed"),
        ({"token": client_token("t1"), "device": "D" * 300}, 4400, "longer than"),
    ],
    ids=[
        "missing",
        "garbage",
        "expired",
        "bad-signature",
        "role",
        "no-tenant",
        "other-tenant",
        "bad-filter",
    ],
)
async def test_refusals_close_with_their_code(
    tansu: Tansu, topic: str, query: dict[str, str], code: int, words: str
) -> None:
    async with running_stream(stream_config(tansu.bootstrap, topic), wait_for_kafka=False) as s:
        got_code, reason = await close_code(s.ws_url(**query))
    assert got_code == code
    assert reason is not None and words in reason


async def test_origin_checked_on_the_upgrade_before_counting(tansu: Tansu, topic: str) -> None:
    """A page of an origin not in stream.allow_origins gets 4003 and nothing
    else, and is not counted; no Origin (not a browser), a listed origin and
    the page's own host are served."""
    config = stream_config(
        tansu.bootstrap, topic, allow_origins=["https://dash.example"], max_per_tenant=1
    )
    async with running_stream(config, wait_for_kafka=False) as s:
        url = s.ws_url(token=client_token("t1"))
        code, reason = await close_code(url, origin="https://evil.example")
        assert code == 4003 and reason is not None and "origin" in reason
        assert not s.service.status().per_tenant
        for origin in (None, "https://dash.example", f"http://127.0.0.1:{s.port}"):
            headers = [(b"origin", origin.encode())] if origin else None
            async with open_websocket_url(url, extra_headers=headers) as ws:
                assert (await next_json(ws))["type"] == "connected"
            await async_wait_until(lambda: not s.service.status().per_tenant, 10, "close")


async def test_token_from_header_or_subprotocol(tansu: Tansu, topic: str) -> None:
    async with running_stream(stream_config(tansu.bootstrap, topic), wait_for_kafka=False) as s:
        # What a browser does: new WebSocket(url, ["bearer", token]).
        browser_like = ["bearer", client_token("t7")]
        async with open_websocket_url(s.ws_url(), subprotocols=browser_like) as ws:
            assert (await next_json(ws))["tenant"] == "t7"
            assert ws.subprotocol == "bearer"
        headers = [(b"authorization", f"Bearer {client_token('t8')}".encode())]
        async with open_websocket_url(s.ws_url(), extra_headers=headers) as ws:
            assert (await next_json(ws))["tenant"] == "t8"


async def test_the_eleventh_connection_of_a_tenant_is_refused(tansu: Tansu, topic: str) -> None:
    async with running_stream(stream_config(tansu.bootstrap, topic), wait_for_kafka=False) as s:
        url = s.ws_url(token=client_token("t1"))
        async with trio.open_nursery() as nursery:
            opened = trio.Event()
            release = trio.Event()
            count = 0

            async def hold() -> None:
                nonlocal count
                async with open_websocket_url(url) as ws:
                    await next_json(ws)
                    count += 1
                    if count == 10:
                        opened.set()
                    await release.wait()

            for _ in range(10):
                nursery.start_soon(hold)
            with trio.fail_after(15):
                await opened.wait()
            assert s.service.status().per_tenant == {"t1": 10}
            code, reason = await close_code(url)
            assert code == 4029
            assert reason is not None and "10 connections" in reason
            # Other tenants are not affected.
            async with open_websocket_url(s.ws_url(token=client_token("t2"))) as other:
                assert (await next_json(other))["type"] == "connected"
            release.set()
        await async_wait_until(lambda: s.service.status().total_connections == 0, 10, "closes")
        async with open_websocket_url(url) as ws:
            assert (await next_json(ws))["type"] == "connected"


async def stalled_websocket(nursery: trio.Nursery, stream: Stream, query: dict[str, str]) -> Any:
    """A client that reads nothing, with a tiny receive buffer, so that the
    server's socket fills after a few events."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", stream.port))
    url = stream.ws_url(**query)
    resource = url.split(str(stream.port), 1)[1]
    return await wrap_client_stream(
        nursery, trio.SocketStream(sock), "127.0.0.1", resource, message_queue_size=1
    )


async def test_a_stalled_client_does_not_delay_a_fast_one(tansu: Tansu, topic: str) -> None:
    """The fast client gets each chunk of events before the next is produced,
    while the stalled one's socket, then queue, fill up; it loses events, is
    told so, and is closed with 1008 once it lost more than the bound."""
    chunks, chunk = 30, 100
    config = stream_config(
        tansu.bootstrap,
        topic,
        consume_batch=chunk,
        client_queue=2 * chunk,
        max_lag_drops=500,
        slow_client_grace_s=60,
    )
    hub_of: Any = None
    async with running_stream(config) as stream, trio.open_nursery() as nursery:
        hub = hub_of = stream.service.hub
        query = {"token": client_token("t1")}
        stalled = await stalled_websocket(nursery, stream, query)
        async with open_websocket_url(stream.ws_url(**query)) as fast:
            await next_json(fast)
            await async_wait_until(
                lambda: stream.service.status().per_tenant.get("t1") == 2, 10, "both clients"
            )
            slowest = 0.0
            values: list[float] = []
            for n in range(chunks):
                start = trio.current_time()
                numbers = range(n * chunk, (n + 1) * chunk)
                produce(tansu.bootstrap, topic, [clean_record("t1", "D", value=i) for i in numbers])
                values += [e["data"]["value"] for e in await telemetry(fast, chunk)]
                slowest = max(slowest, trio.current_time() - start)
            assert sorted(values) == list(range(chunks * chunk))
            assert hub.events_dropped > 500
            # It reads again: what was in flight, then why, then the close.
            received: list[dict[str, Any]] = []
            with pytest.raises(ConnectionClosed) as closed, trio.fail_after(20):
                while True:
                    received.append(json.loads(await stalled.get_message()))
            # The fast one is still served.
            produce(tansu.bootstrap, topic, [clean_record("t1", "DEV-0", value=-1)])
            (last,) = await telemetry(fast, 1)
            assert last["data"]["value"] == -1
    assert hub_of is not None and hub_of.slow_disconnects == 1
    assert closed.value.reason is not None
    assert closed.value.reason.code == 1008
    assert "too slow" in (closed.value.reason.reason or "")
    assert received[0]["type"] == "connected"
    kinds = [m["type"] for m in received]
    assert set(kinds[1:-1]) == {"telemetry.update"}
    assert kinds[-1] == "lagged"
    assert received[-1]["dropped"] > 0
    # What it got came in order, without repeats, and stopped short of the end.
    got = [m["data"]["value"] for m in received[1:-1]]
    assert got == sorted(set(got))
    assert len(got) < chunks * chunk - 500
    assert slowest < 5.0


async def test_keepalive_ping_when_nothing_happens(tansu: Tansu, topic: str) -> None:
    config = stream_config(tansu.bootstrap, topic, ping_interval_s=0.3)
    async with (
        running_stream(config, wait_for_kafka=False) as stream,
        open_websocket_url(stream.ws_url(token=client_token("t1"))) as ws,
    ):
        await next_json(ws)
        start = trio.current_time()
        ping = await next_json(ws, timeout=5)
        waited = trio.current_time() - start
    assert ping["type"] == "ping"
    assert re.match(ISO_MS, ping["ts"])
    assert waited >= 0.25


async def test_shutdown_closes_with_going_away(tansu: Tansu, topic: str) -> None:
    config = stream_config(tansu.bootstrap, topic)
    async with (
        running_stream(config, wait_for_kafka=False) as stream,
        open_websocket_url(stream.ws_url(token=client_token("t1"))) as ws,
    ):
        await next_json(ws)
        stream.shutdown()
        with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
            await ws.get_message()
    assert closed.value.reason is not None
    assert closed.value.reason.code == 1001


async def test_reload_takes_new_limits_and_keys_and_keeps_open_connections(
    tansu: Tansu, topic: str
) -> None:
    config = stream_config(tansu.bootstrap, topic, max_per_tenant=1)
    rotated = "rotated-secret-0123456789abcdef0123456"
    async with (
        running_stream(config) as stream,
        open_websocket_url(stream.ws_url(token=client_token("t1"))) as before,
    ):
        await next_json(before)
        assert (await close_code(stream.ws_url(token=client_token("t1"))))[0] == 4029

        replace = msgspec.structs.replace
        new = replace(
            config,
            stream=replace(config.stream, max_per_tenant=2),
            auth=AuthSettings(jwt_secret=rotated),
        )
        with pytest.raises(StreamSettingsError):
            stream.service.reload(replace(new, stream=replace(new.stream, client_queue=1)))
        assert stream.service.hub.max_per_tenant == 1  # a refused reload changes nothing
        stream.service.reload(new)

        assert (await close_code(stream.ws_url(token=client_token("t1"))))[0] == 4001
        after_token = token(secret=rotated, role="client", tenant="t1")
        async with open_websocket_url(stream.ws_url(token=after_token)) as after:
            assert (await next_json(after))["type"] == "connected"
            produce(tansu.bootstrap, topic, [clean_record("t1", "DEV-1")])
            for ws in (before, after):
                (event,) = await telemetry(ws, 1)
                assert event["data"]["device_serial_id"] == "DEV-1"
