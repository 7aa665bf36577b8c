"""Where the stream's records come from: Kafka when it answers, this daemon's
own ingest when it does not (edge-local mode), and what the status says."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import msgspec
import pytest
import trio
from confluent_kafka import Producer
from trio_websocket import open_websocket_url

from bridge.io.http import ListenError
from bridge.stream.consumer import MAX_BEHIND_S
from bridge.stream.service import run_stream
from tests.integration.test_stream_clients import (
    SseClient,
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
from tests.support import Tansu, async_wait_until


async def test_kafka_down_at_start_local_records_flow_then_kafka_takes_over(
    tmp_path: Path, unique: str
) -> None:
    """The stream starts before its broker: it keeps trying, says so, and
    serves what the local ingest hands it.  Once Kafka answers, the records
    that were delivered locally and reach Kafka later (the spool's replay)
    are not delivered twice.  When Kafka goes away, local records flow again."""
    broker = Tansu(tmp_path)  # its port is chosen, it is not started yet
    topic = f"clean.late.{unique}"
    config = stream_config(
        broker.bootstrap, topic, consumer_properties={"reconnect.backoff.max.ms": "500"}
    )
    local_records = [clean_record("t1", "DEV-1"), clean_record("t1", "DEV-2")]
    async with running_stream(config, wait_for_kafka=False) as stream:
        service = stream.service
        status = service.status()
        assert (status.source, status.kafka_state) == ("local", "connecting")
        async with open_websocket_url(stream.ws_url(token=client_token("t1"))) as ws:
            await next_json(ws)
            for value in local_records:
                service.feed_local(value)
            events = await telemetry(ws, 2)
            assert [e["event_id"] for e in events] == ["local:1", "local:2"]
            assert [e["data"] for e in events] == [json.loads(v) for v in local_records]

            with broker:
                # The topic appears after the stream subscribed: read from its start.
                produce(broker.bootstrap, topic, local_records)
                await async_wait_until(lambda: service.kafka_state == "ok", 30, "Kafka")
                fresh = clean_record("t1", "DEV-3")
                produce(broker.bootstrap, topic, [fresh])
                (event,) = await telemetry(ws, 1)
                assert event["data"]["device_serial_id"] == "DEV-3"
                assert event["event_id"].startswith(f"{topic}:")
                assert service.status().source == "kafka"
                # Kafka feeds the stream now: the local copy is not sent as well.
                service.feed_local(clean_record("t1", "DEV-4"))
                produce(broker.bootstrap, topic, [clean_record("t1", "DEV-5")])
                (event,) = await telemetry(ws, 1)
                assert event["data"]["device_serial_id"] == "DEV-5"
            # The broker is gone again: the local pipeline feeds the stream.
            await async_wait_until(lambda: service.kafka_state == "down", 30, "Kafka down")
            assert service.status().source == "local"
            service.feed_local(clean_record("t1", "DEV-6"))
            (event,) = await telemetry(ws, 1)
            assert (event["event_id"], event["data"]["device_serial_id"]) == ("local:3", "DEV-6")


async def test_local_source_never_reads_kafka(unique: str) -> None:
    config = stream_config("127.0.0.1:9", f"unused.{unique}", source="local")
    async with running_stream(config, wait_for_kafka=False) as stream:
        assert stream.service.source is None
        status = stream.service.status()
        assert (status.source, status.kafka_state) == ("local", "disabled")
        async with open_websocket_url(stream.ws_url(token=token(role="admin"))) as ws:
            await next_json(ws)
            stream.service.feed_local(clean_record("t4", "DEV-1"))
            (event,) = await telemetry(ws, 1)
    assert event["event_id"] == "local:1"


async def test_malformed_records_are_counted_and_skipped(tansu: Tansu, unique: str) -> None:
    topic = f"clean.bad.{unique}"
    create_topic(tansu.bootstrap, topic, partitions=1)
    bad = [b"not json", b"{}", json.dumps({"tenant": "t1"}).encode(), b""]
    async with running_stream(stream_config(tansu.bootstrap, topic)) as stream:
        async with open_websocket_url(stream.ws_url(token=token(role="admin"))) as ws:
            await next_json(ws)
            produce(tansu.bootstrap, topic, [*bad, clean_record("t1", "GOOD")])
            (event,) = await telemetry(ws, 1)
        status = stream.service.status()
    assert event["data"]["device_serial_id"] == "GOOD"
    assert status.malformed_records == len(bad)
    assert event["event_id"] == f"{topic}:0:{len(bad)}"


async def test_a_stream_behind_skips_to_the_present_and_says_how_many(
    tansu: Tansu, unique: str
) -> None:
    """Records older than MAX_BEHIND_S show a stream that fell behind: after
    the batch that shows it, the consumer goes to the end of every partition
    and the clients get ``lagged`` with the records skipped, instead of an
    ever older stream (and librdkafka's prefetch full of it)."""
    topic = f"clean.behind.{unique}"
    create_topic(tansu.bootstrap, topic, partitions=1)
    old_ms = int((time.time() - 10 * MAX_BEHIND_S) * 1000)
    config = stream_config(tansu.bootstrap, topic, consume_batch=1)
    async with running_stream(config) as stream:
        async with open_websocket_url(stream.ws_url(token=token(role="admin"))) as ws:
            await next_json(ws)
            producer = Producer({"bootstrap.servers": tansu.bootstrap, "linger.ms": 1})
            for n in range(5):
                producer.produce(topic, clean_record("t1", f"OLD{n}"), timestamp=old_ms)
            assert producer.flush(20) == 0
            seen: list[str] = []
            lagged = 0
            with trio.fail_after(20):
                while "NOW" not in seen:
                    message = await next_json(ws)
                    if message["type"] == "lagged":
                        lagged += message["dropped"]
                        produce(tansu.bootstrap, topic, [clean_record("t1", "NOW")])
                    elif message["type"] == "telemetry.update":
                        seen.append(message["data"]["device_serial_id"])
        skipped = stream.service.hub.records_skipped
    # The first old record shows the stream behind: the other four are
    # skipped and the clients told; the present comes through.
    assert seen == ["OLD0", "NOW"]
    assert lagged == skipped == 4


async def test_status_endpoint(tansu: Tansu, unique: str) -> None:
    topic = f"clean.status.{unique}"
    create_topic(tansu.bootstrap, topic)
    async with (
        running_stream(stream_config(tansu.bootstrap, topic, max_per_tenant=7)) as s,
        open_websocket_url(s.ws_url(token=client_token("t1"))) as one,
        open_websocket_url(s.ws_url(token=client_token("t1"))) as two,
        open_websocket_url(s.ws_url(token=token(role="admin"))) as admin,
    ):
        for ws in (one, two, admin):
            await next_json(ws)
        sse = await SseClient.open(s.port, s.sse_target(token=client_token("t2")))
        await sse.next_message()
        client = await SseClient.open(s.port, "/api/stream/status")
        assert client.status == 200
        body = await client.body_json()
        await sse.aclose()
    assert body["total_connections"] == 4
    assert body["per_tenant"] == {"t1": 2, "t2": 1, "*": 1}
    assert body["max_per_tenant"] == 7
    assert body["source"] == "kafka"
    assert body["kafka_state"] == "ok"
    assert body["topics"] == [topic]
    assert body["connections"] == {"websocket": {"t1": 2, "*": 1}, "sse": {"t2": 1}}
    assert [(p["topic"], p["partition"], p["position"]) for p in body["partitions"]] == [
        (topic, n, 0) for n in range(4)
    ]


async def test_a_taken_port_is_a_clear_error_naming_the_address(unique: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        config = msgspec.structs.replace(
            stream_config("127.0.0.1:9", f"unused.{unique}", source="local"), listen=address
        )
        with pytest.raises(ListenError) as caught:
            await run_stream(config)
    assert str(caught.value) == f"cannot listen on {address}: " + (
        "address already in use (another edge-bridge, or another server?)"
    )


def test_listen_address_must_be_host_and_port() -> None:
    from bridge.io.http import parse_listen

    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    assert parse_listen(":8080") == ("0.0.0.0", 8080)
    for bad in ("8080", "host:", "host:http", "host:70000"):
        with pytest.raises(ListenError, match="expected HOST:PORT"):
            parse_listen(bad)
