"""The stream's consumer reads only while a client is connected: run_stream
in-process on real sockets, records produced to a real Kafka broker (Tansu).

While no one watches, every record the consumer read would be thrown away; at
full load reading the bridge's clean records back cost a fifth of the daemon's
CPU per message (docs/benchmarks.md).  So it pauses, and a client that comes
gets what is written from then on, however long the pause was."""

from __future__ import annotations

import pytest
from trio_websocket import open_websocket_url

from tests.integration.test_stream_clients import (
    clean_record,
    client_token,
    create_topic,
    next_json,
    produce,
    running_stream,
    stream_config,
    telemetry,
)
from tests.support import Tansu, async_wait_until, kafka_read


@pytest.fixture
def topic(tansu: Tansu, unique: str) -> str:
    name = f"clean.idle.{unique}"
    create_topic(tansu.bootstrap, name)
    return name


async def test_with_no_client_nothing_is_read_and_a_new_client_starts_at_the_present(
    tansu: Tansu, topic: str
) -> None:
    async with running_stream(stream_config(tansu.bootstrap, topic)) as stream:
        source = stream.service.source
        assert source is not None
        await stream.paused()
        assert stream.service.status().kafka_paused
        # Written while no one watched.  The last one alone in its batch:
        # Tansu reports the start of a partition's last batch (plus one) as
        # its end, where Kafka reports the end.
        unseen = [clean_record("t1", "DEV-1", value=float(i)) for i in range(50)]
        produce(tansu.bootstrap, topic, unseen[:-1])
        produce(tansu.bootstrap, topic, unseen[-1:])

        async with open_websocket_url(stream.ws_url(token=client_token("t1"))) as ws:
            assert (await next_json(ws))["type"] == "connected"
            await async_wait_until(lambda: source.live, 20, "the stream to resume")
            assert not stream.service.status().kafka_paused
            # The positions jumped past what was written during the pause.
            assert sum(stream.service.hub.positions[topic].values()) == len(unseen)
            fresh = [clean_record("t1", "DEV-2", value=float(i)) for i in range(5)]
            produce(tansu.bootstrap, topic, fresh)
            got = await telemetry(ws, 5)
            # Nothing else is on its way: the next message answers this.
            await ws.send_message('{"action": "clear_filters"}')
            assert (await next_json(ws))["type"] == "filters_cleared"

        await stream.paused()
        kafka_read(tansu.bootstrap, topic, expected=len(unseen) + len(fresh))

    assert [e["data"]["device_serial_id"] for e in got] == ["DEV-2"] * 5
    assert [e["data"]["value"] for e in got] == [float(i) for i in range(5)]


async def test_a_configured_group_keeps_reading_with_no_client(tansu: Tansu, topic: str) -> None:
    """A ``group_id`` is a group that outlives the process and commits: it
    reads whether or not anyone watches."""
    config = stream_config(tansu.bootstrap, topic, group_id=f"kept-{topic}")
    async with running_stream(config) as stream:
        records = [clean_record("t1", "DEV-1", value=float(i)) for i in range(7)]
        produce(tansu.bootstrap, topic, records)
        await stream.consumed(topic, len(records))  # read with no client connected
        source = stream.service.source
        assert source is not None and not source.paused
        assert not stream.service.status().kafka_paused
