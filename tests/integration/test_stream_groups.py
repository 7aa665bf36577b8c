"""How stream instances scale with Kafka consumer groups (docs/benchmarks.md,
"Scaling"): with no ``stream.group_id`` every instance has a group of its own
and sees every record; instances sharing a ``group_id`` split the partitions,
so each record reaches exactly one of them."""

from __future__ import annotations

from typing import Any

import trio
from trio_websocket import open_websocket_url

from tests.integration.test_stream_clients import (
    clean_record,
    create_topic,
    next_json,
    produce,
    running_stream,
    stream_config,
    telemetry,
    token,
)
from tests.support import Tansu, async_wait_until

RECORDS = 40


async def test_instances_with_groups_of_their_own_each_see_every_record(
    tansu: Tansu, unique: str
) -> None:
    topic = f"clean.own-groups.{unique}"
    create_topic(tansu.bootstrap, topic)
    config = stream_config(tansu.bootstrap, topic)
    values = [clean_record("t1", f"DEV-{n}") for n in range(RECORDS)]
    async with (
        running_stream(config) as one,
        running_stream(config) as two,
        open_websocket_url(one.ws_url(token=token(role="admin"))) as ws_one,
        open_websocket_url(two.ws_url(token=token(role="admin"))) as ws_two,
    ):
        assert one.service.source is not None and two.service.source is not None
        assert one.service.source.group_id != two.service.source.group_id
        await next_json(ws_one)
        await next_json(ws_two)
        produce(tansu.bootstrap, topic, values)
        for ws in (ws_one, ws_two):
            events = await telemetry(ws, RECORDS)
            devices = sorted(e["data"]["device_serial_id"] for e in events)
            assert devices == sorted(f"DEV-{n}" for n in range(RECORDS))


async def test_instances_sharing_a_group_split_the_records(tansu: Tansu, unique: str) -> None:
    topic = f"clean.shared-group.{unique}"
    create_topic(tansu.bootstrap, topic)
    config = stream_config(tansu.bootstrap, topic, group_id=f"dashboards-{unique}")
    values = [clean_record("t1", f"DEV-{n}") for n in range(RECORDS)]
    async with (
        running_stream(config) as one,
        running_stream(config, wait_for_kafka=False) as two,
    ):
        sources = [one.service.source, two.service.source]
        assert sources[0] is not None and sources[1] is not None

        def split() -> bool:
            a, b = (s.assigned for s in sources if s is not None)
            return bool(a) and bool(b) and not a & b and len(a | b) == 4

        await async_wait_until(split, 60, "the group's partitions split between both")
        async with (
            open_websocket_url(one.ws_url(token=token(role="admin"))) as ws_one,
            open_websocket_url(two.ws_url(token=token(role="admin"))) as ws_two,
        ):
            await next_json(ws_one)
            await next_json(ws_two)
            produce(tansu.bootstrap, topic, values)
            seen: list[list[str]] = [[], []]

            async def collect(ws: Any, into: list[str]) -> None:
                while True:
                    message = await next_json(ws, timeout=30)
                    if message["type"] == "telemetry.update":
                        into.append(message["data"]["device_serial_id"])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, ws_one, seen[0])
                nursery.start_soon(collect, ws_two, seen[1])
                await async_wait_until(
                    lambda: len(seen[0]) + len(seen[1]) >= RECORDS, 30, "every record"
                )
                nursery.cancel_scope.cancel()
    assert sorted(seen[0] + seen[1]) == sorted(f"DEV-{n}" for n in range(RECORDS))
    assert seen[0] and seen[1], "both instances should hold some of the keys"
