"""The SSE stream in-process: statuses, the envelope, keepalive comments and
resuming with Last-Event-ID, against a real Kafka broker (Tansu)."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import trio

from bridge.core.events import decode_cursor
from tests.integration.test_stream_clients import (
    ISO_MS,
    SseClient,
    SseMessage,
    Stream,
    clean_record,
    client_token,
    create_topic,
    produce,
    running_stream,
    stream_config,
    token,
)
from tests.support import Tansu, async_wait_until, kafka_read


@pytest.fixture
def topic(tansu: Tansu, unique: str) -> str:
    name = f"clean.sse.{unique}"
    create_topic(tansu.bootstrap, name)
    return name


Headers = list[tuple[str, str]] | None


async def open_sse(stream: Stream, query: dict[str, str], headers: Headers = None) -> SseClient:
    return await SseClient.open(stream.port, stream.sse_target(**query), headers or [])


async def connected(stream: Stream, query: dict[str, str], headers: Headers = None) -> SseClient:
    """An accepted SSE client past its ``connected`` event."""
    client = await open_sse(stream, query, headers)
    assert client.status == 200, await client.body_json()
    first = await client.next_message()
    assert first.id is None and first.json()["type"] == "connected"
    return client


async def test_first_event_is_connected_then_the_exact_envelope(tansu: Tansu, topic: str) -> None:
    value = clean_record("t1", "DEV-001", "humidity", 61.0)
    async with running_stream(stream_config(tansu.bootstrap, topic)) as stream:
        client = await open_sse(stream, {"token": client_token("t1")})
        assert client.status == 200
        assert client.headers["content-type"] == "text/event-stream"
        assert client.headers["cache-control"] == "no-cache"
        first = await client.next_message()
        assert first.id is None
        assert first.json() == {
            "type": "connected",
            "tenant": "t1",
            "role": "client",
            "filters": {"tenant": "t1", "devices": None, "metrics": None},
        }
        produce(tansu.bootstrap, topic, [value])
        (event,) = await client.telemetry(1)
        await client.aclose()

    (stored,) = kafka_read(tansu.bootstrap, topic, expected=1)
    body = event.json()
    assert re.match(ISO_MS, body.pop("sent_at"))
    assert body == {
        "event_id": f"{topic}:{stored.partition}:{stored.offset}",
        "type": "telemetry.update",
        "schema_version": 1,
        "data": json.loads(value),
    }
    # The id is the stream's position in every partition just after this record.
    assert event.id is not None
    assert decode_cursor(event.id) == {
        topic: {p: (stored.offset + 1 if p == stored.partition else 0) for p in range(4)}
    }


@pytest.mark.parametrize(
    ("query", "status", "error"),
    [
        ({}, 401, "unauthenticated"),
        ({"token": token(exp_in=-60, role="client", tenant="t1")}, 401, "unauthenticated"),
        ({"token": token(role="operator", tenant="t1")}, 403, "forbidden"),
        ({"token": client_token("t1"), "tenant": "t2"}, 403, "forbidden"),
        ({"token": client_token("t1"), "metric": "m" * 300}, 400, "bad_request"),
    ],
)
async def test_refusals_are_http_statuses_with_a_json_body(
    tansu: Tansu, topic: str, query: dict[str, str], status: int, error: str
) -> None:
    async with running_stream(stream_config(tansu.bootstrap, topic), wait_for_kafka=False) as s:
        client = await open_sse(s, query)
        assert client.status == status
        assert client.headers["content-type"] == "application/json"
        body = await client.body_json()
    assert body["error"] == error
    assert body["message"]


async def test_too_many_connections_is_429_across_transports(tansu: Tansu, topic: str) -> None:
    config = stream_config(tansu.bootstrap, topic, max_per_tenant=2)
    async with running_stream(config, wait_for_kafka=False) as stream:
        bearer = [("authorization", f"Bearer {client_token('t1')}")]
        first = await connected(stream, {}, bearer)
        second = await connected(stream, {}, bearer)
        refused = await open_sse(stream, {}, bearer)
        assert refused.status == 429
        assert (await refused.body_json())["error"] == "too_many"
        await first.aclose()
        await async_wait_until(lambda: stream.service.status().per_tenant == {"t1": 1}, 10, "close")
        third = await connected(stream, {}, bearer)
        for client in (second, third):
            await client.aclose()


async def test_keepalive_comment_when_nothing_happens(tansu: Tansu, topic: str) -> None:
    config = stream_config(tansu.bootstrap, topic, ping_interval_s=0.3)
    async with running_stream(config, wait_for_kafka=False) as stream:
        client = await connected(stream, {"token": client_token("t1")})
        ping = await client.next_message(timeout=5)
        await client.aclose()
    assert ping.data is None and ping.id is None
    assert ping.comments and ping.comments[0].startswith("ping ")


async def test_cors_header_for_allowed_origins_and_403_before_counting_for_others(
    tansu: Tansu, topic: str
) -> None:
    config = stream_config(
        tansu.bootstrap, topic, allow_origins=["https://dash.example"], max_per_tenant=1
    )
    async with running_stream(config, wait_for_kafka=False) as stream:
        t1 = client_token("t1")
        allowed = await connected(stream, {"token": t1}, [("origin", "https://dash.example")])
        assert allowed.headers["access-control-allow-origin"] == "https://dash.example"
        await allowed.aclose()
        await async_wait_until(lambda: not stream.service.status().per_tenant, 10, "close")
        # A refused origin is refused before it counts: the tenant's one slot stays free.
        other = await open_sse(stream, {"token": t1}, [("origin", "https://evil.example")])
        assert other.status == 403
        assert "access-control-allow-origin" not in other.headers
        assert "evil.example" in (await other.body_json())["message"]
        # No Origin (not a browser), or the page's own host: allowed.
        same = await connected(
            stream, {"token": t1}, [("origin", f"http://127.0.0.1:{stream.port}")]
        )
        await same.aclose()


# --------------------------------------------------------------------------- resume
def ids_of(messages: list[SseMessage]) -> list[str]:
    return [m.json()["event_id"] for m in messages]


async def test_resume_with_last_event_id_yields_exactly_the_missed_events_once(
    tansu: Tansu, topic: str
) -> None:
    """Records for several devices (so several partitions) and for another
    tenant; the client sees its first ones, goes away, and reconnects with the
    id of the last event it saw.  It must get the rest of its tenant's
    records, each once, in each partition's order, then live ones."""

    def batch(tag: str, count: int) -> list[bytes]:
        return [
            clean_record(tenant, f"DEV-{i % 5}", value=float(i), metric=tag)
            for i in range(count)
            for tenant in ("t1", "t2")
        ]

    before, missed, live = batch("before", 12), batch("missed", 40), batch("live", 8)
    async with running_stream(stream_config(tansu.bootstrap, topic)) as stream:
        query = {"token": client_token("t1")}
        client = await connected(stream, query)
        produce(tansu.bootstrap, topic, before)
        seen = await client.telemetry(12)
        last_id = seen[-1].id
        assert last_id is not None
        await client.aclose()

        produce(tansu.bootstrap, topic, missed)
        # With no client connected the stream reads nothing: the resume
        # replays the gap from Kafka up to where the live stream starts.
        await stream.paused()

        resumed = await connected(stream, query, [("last-event-id", last_id)])
        replayed = await resumed.telemetry(40)
        produce(tansu.bootstrap, topic, live)
        after = await resumed.telemetry(8)
        # A marker, produced last, proves nothing else was on its way.
        produce(tansu.bootstrap, topic, [clean_record("t1", "DEV-0", metric="marker")])
        (marker,) = await resumed.telemetry(1)
        assert marker.json()["data"]["metric"] == "marker"
        await resumed.aclose()

    stored = kafka_read(tansu.bootstrap, topic, expected=len(before) + len(missed) + len(live) + 1)
    expected = {
        f"{topic}:{r.partition}:{r.offset}": r.json()
        for r in stored
        if r.json()["tenant"] == "t1" and r.json()["metric"] == "missed"
    }
    assert Counter(ids_of(replayed)) == Counter(list(expected))
    for message in replayed:
        assert message.json()["data"] == expected[message.json()["event_id"]]
    # Each partition's events came in offset order.
    per_partition: dict[int, list[int]] = {}
    for event_id in ids_of(replayed):
        _, partition, offset = event_id.rsplit(":", 2)
        per_partition.setdefault(int(partition), []).append(int(offset))
    assert all(offsets == sorted(offsets) for offsets in per_partition.values())
    assert len(per_partition) > 1
    assert [m.json()["data"]["metric"] for m in after] == ["live"] * 8
    assert {m.json()["data"]["tenant"] for m in replayed + after} == {"t1"}


async def test_resume_keeps_the_filters_and_ids_stay_resumable(tansu: Tansu, topic: str) -> None:
    """A filtered client resumes through ?last_event_id= (for clients that cannot
    set headers); cut off in the middle of the replay, it resumes again from
    the last replayed id and gets the remainder, nothing twice."""
    records = [clean_record("t1", f"DEV-{i % 4}", value=float(i)) for i in range(60)]
    async with running_stream(stream_config(tansu.bootstrap, topic)) as stream:
        query = {"token": client_token("t1"), "device": "DEV-1,DEV-2"}
        client = await connected(stream, query)
        produce(tansu.bootstrap, topic, [clean_record("t1", "DEV-1", value=-1.0)])
        (first,) = await client.telemetry(1)
        await client.aclose()
        assert first.id is not None

        produce(tansu.bootstrap, topic, records)
        # With no client connected the stream reads nothing: the resume
        # replays the gap from Kafka up to where the live stream starts.
        await stream.paused()
        part = await connected(stream, {**query, "last_event_id": first.id})
        head = await part.telemetry(10)
        await part.aclose()
        assert head[-1].id is not None
        rest_client = await connected(stream, {**query, "last_event_id": head[-1].id})
        rest = await rest_client.telemetry(20)
        produce(tansu.bootstrap, topic, [clean_record("t1", "DEV-2", value=-2.0)])
        (marker,) = await rest_client.telemetry(1)
        await rest_client.aclose()

    values = [m.json()["data"]["value"] for m in head + rest]
    assert sorted(values) == [float(i) for i in range(60) if i % 4 in (1, 2)]
    assert {m.json()["data"]["device_serial_id"] for m in head + rest} == {"DEV-1", "DEV-2"}
    assert marker.json()["data"]["value"] == -2.0


async def test_an_unreadable_last_event_id_gets_an_error_then_live_events(
    tansu: Tansu, topic: str
) -> None:
    async with running_stream(stream_config(tansu.bootstrap, topic)) as stream:
        query = {"token": client_token("t1")}
        client = await connected(stream, query, [("last-event-id", "bogus")])
        notice = await client.next_message()
        assert notice.json()["type"] == "error"
        assert "Last-Event-ID" in notice.json()["message"]
        produce(tansu.bootstrap, topic, [clean_record("t1", "DEV-1")])
        (event,) = await client.telemetry(1)
        await client.aclose()
    assert event.json()["data"]["device_serial_id"] == "DEV-1"


async def test_a_slow_sse_client_is_told_and_then_ended(tansu: Tansu, topic: str) -> None:
    """The same policy as WebSocket: the response ends, and the client's
    reconnection with its last id replays what it lost."""
    config = stream_config(
        tansu.bootstrap,
        topic,
        consume_batch=50,
        client_queue=50,
        max_lag_drops=100,
        slow_client_grace_s=60,
    )
    records = [clean_record("t1", "DEV-1", value=float(i)) for i in range(2000)]
    async with running_stream(config) as stream:
        query = {"token": client_token("t1")}
        client = await connected(stream, query)
        produce(tansu.bootstrap, topic, records)  # the client reads nothing meanwhile
        hub = stream.service.hub
        await async_wait_until(lambda: hub.events_dropped > 100, 20, "the client to lag")
        got: list[SseMessage] = []
        with pytest.raises(EOFError), trio.fail_after(20):
            while True:
                got.append(await client.next_message())
        await client.aclose()
        assert hub.slow_disconnects == 1
        lagged = got[-1].json()
        assert lagged["type"] == "lagged" and lagged["dropped"] > 100
        events = [m for m in got if m.id is not None]
        # With no client connected the stream reads nothing: the resume
        # replays the gap from Kafka up to where the live stream starts.
        await stream.paused()
        resumed = await connected(stream, query, [("last-event-id", events[-1].id or "")])
        rest = await resumed.telemetry(2000 - len(events), timeout=30)
        await resumed.aclose()
    values = [m.json()["data"]["value"] for m in events + rest]
    assert values == [float(i) for i in range(2000)]


async def test_resume_right_after_a_restart_waits_for_kafka_and_loses_nothing(
    tansu: Tansu, topic: str
) -> None:
    """A new stream's consumer has no partitions for a moment after its start;
    a client resuming then waits for them and gets every record after its
    cursor: those written while no stream ran, and those written meanwhile."""
    config = stream_config(tansu.bootstrap, topic)
    query = {"token": client_token("t1")}
    async with running_stream(config) as first:
        client = await connected(first, query)
        produce(
            tansu.bootstrap, topic, [clean_record("t1", f"DEV-{i}", "before") for i in range(8)]
        )
        seen = await client.telemetry(8)
        await client.aclose()
    cursor = seen[-1].id
    assert cursor is not None
    between = [clean_record("t1", f"DEV-{i}", "between", float(i)) for i in range(20)]
    produce(tansu.bootstrap, topic, between)
    async with running_stream(config, wait_for_kafka=False) as second:
        assert second.service.kafka_state != "ok"
        resumed = await connected(second, query, [("last-event-id", cursor)])
        produce(tansu.bootstrap, topic, [clean_record("t1", "DEV-0", "meanwhile")])
        got = await resumed.telemetry(21, timeout=30)
        produce(tansu.bootstrap, topic, [clean_record("t1", "DEV-1", "marker")])
        (marker,) = await resumed.telemetry(1)
        await resumed.aclose()
    metrics = Counter(m.json()["data"]["metric"] for m in got)
    assert metrics == {"between": 20, "meanwhile": 1}
    assert len(set(ids_of(got))) == 21
    assert marker.json()["data"]["metric"] == "marker"


async def test_resume_while_kafka_never_feeds_says_come_back_and_ends(unique: str) -> None:
    config = stream_config("127.0.0.1:9", f"clean.none.{unique}", replay_timeout_s=0.5)
    async with running_stream(config, wait_for_kafka=False) as stream:
        client = await connected(
            stream, {"token": client_token("t1")}, [("last-event-id", "x@0:1")]
        )
        retry = await client.next_message()
        notice = await client.next_message()
        with pytest.raises(EOFError):
            await client.next_message()
    assert retry.retry is not None and retry.retry > 0
    assert notice.json()["type"] == "error" and "reconnect" in notice.json()["message"]


async def test_cursors_it_cannot_use_get_an_error_at_once_and_hold_no_replay_slot(
    tansu: Tansu, topic: str
) -> None:
    """Partitions the topic does not have are found in its metadata, not by
    waiting the replay timeout for their end; numbers beyond Kafka's bounds
    and non-ASCII digits are not cursors.  Each client gets an error event,
    then live events."""
    config = stream_config(tansu.bootstrap, topic, replay_concurrency=1, replay_timeout_s=60)
    bad = [
        f"{topic}@0:0,1:0,2:0,3:0,7:0",
        f"{topic}@2147483648:0",
        f"{topic}@0:" + "1" * 5000,
        f"{topic}@²:0",
    ]
    query = {"token": client_token("t1")}
    async with running_stream(config) as stream:
        clients = []
        with trio.fail_after(10):  # far below the replay timeout, with one slot
            for cursor in [bad[0], *bad]:
                client = await connected(stream, {**query, "last_event_id": cursor})
                notice = (await client.next_message()).json()
                assert notice["type"] == "error" and "Last-Event-ID" in notice["message"]
                clients.append(client)
        produce(tansu.bootstrap, topic, [clean_record("t1", "DEV-1")])
        for client in clients:
            (event,) = await client.telemetry(1)
            assert event.json()["data"]["device_serial_id"] == "DEV-1"
            await client.aclose()
