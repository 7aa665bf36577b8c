"""The hub's fan-out and the slow-client policy, without sockets or Kafka."""

from __future__ import annotations

import json
from collections import deque

import pytest
import trio
import trio.testing

from bridge.core.events import Filters, decode_cursor, parse_record
from bridge.stream.hub import (
    LOCAL_MEMORY,
    Client,
    ClientQueue,
    Event,
    Hub,
    TooManyConnections,
    Transport,
)

SENT_AT = "2026-02-25T14:00:01.000Z"


def record(tenant: str = "t1", device: str = "DEV-1", metric: str = "temperature") -> bytes:
    return json.dumps(
        {
            "tenant": tenant,
            "device_serial_id": device,
            "metric": metric,
            "metric_type": "numeric",
            "value": 1.5,
            "ts": "2026-02-25T14:00:00Z",
            "received_at": "2026-02-25T14:00:00.100Z",
            "schema_version": 1,
        }
    ).encode()


def event(n: int) -> Event:
    return Event(parse_record(record()), f"e{n}".encode(), "c", 0, n)


def client(
    filters: Filters, transport: Transport = Transport.WEBSOCKET, capacity: int = 100
) -> Client:
    return Client(transport, filters, "client", ClientQueue(capacity, max_drops=1000))


def taken(c: Client) -> list[Event]:
    items = list(c.queue._items)
    c.queue._items.clear()
    return items


# --------------------------------------------------------------------------- the queue policy
async def test_a_full_queue_drops_the_oldest_and_reports_how_many() -> None:
    queue = ClientQueue(3, max_drops=100)
    for n in range(5):
        queue.put(event(n))
    batch = await queue.next_batch(0)
    assert [e.offset for e in batch.events] == [2, 3, 4]
    assert batch.dropped == 2
    assert not batch.kicked
    assert queue.dropped_total == 2


async def test_past_the_bound_the_client_is_kicked_and_gets_nothing_more() -> None:
    queue = ClientQueue(2, max_drops=3)
    kicks: list[bool] = []
    queue.on_kick = lambda: kicks.append(True)
    for n in range(5):  # 2 fit, 3 drops: at the bound, not past it
        queue.put(event(n))
    assert not queue.kicked
    queue.put(event(5))  # the fourth drop
    assert queue.kicked
    assert kicks == [True]
    queue.put(event(6))
    batch = await queue.next_batch(0)
    assert batch.events == []
    assert batch.dropped == 4
    assert batch.kicked


async def test_catching_up_resets_the_count_towards_the_bound() -> None:
    queue = ClientQueue(1, max_drops=2)
    for round_ in range(4):  # 2 drops per round, 8 in all, never 3 in a row
        for n in range(3):
            queue.put(event(round_ * 3 + n))
        await queue.next_batch(0)  # takes what is queued
        await queue.next_batch(0)  # finds the queue empty: caught up
        assert not queue.kicked
    assert queue.dropped_total == 8


async def test_records_the_stream_skipped_are_told_to_every_client_without_a_kick() -> None:
    hub = Hub(max_per_tenant=10)
    everyone, tenant = client(Filters(tenant=None)), client(Filters(tenant="t1"))
    hub.register(everyone)
    hub.register(tenant)
    tenant.queue.max_drops = 5
    tenant.queue.put(event(1))
    hub.skipped(50)  # more than max_drops: the stream fell behind, not the client
    assert hub.records_skipped == 50
    for c in (everyone, tenant):
        batch = await c.queue.next_batch(0)
        assert batch.dropped == 50 and not batch.kicked
    assert [e.offset for e in (await tenant.queue.next_batch(0)).events] == []
    assert tenant.queue.dropped_total == 50


async def test_the_sender_waits_for_events_and_wakes_on_one() -> None:
    queue = ClientQueue(10, max_drops=10)
    got: list[list[int]] = []

    async def sender() -> None:
        batch = await queue.next_batch(60)
        got.append([e.offset for e in batch.events])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        queue.put(event(7))
    assert got == [[7]]


async def test_an_idle_queue_returns_empty_after_the_timeout() -> None:
    queue = ClientQueue(10, max_drops=10)
    with trio.fail_after(5):
        batch = await queue.next_batch(0.01)
    assert batch.events == [] and batch.dropped == 0 and not batch.kicked


def test_retain_drops_events_that_no_longer_match() -> None:
    queue = ClientQueue(10, max_drops=10)
    for n in range(6):
        queue.put(event(n))
    queue.retain(lambda e: e.offset % 2 == 0)
    assert [e.offset for e in queue._items] == [0, 2, 4]


# --------------------------------------------------------------------------- the hub
def test_connections_are_limited_per_tenant_and_counted_by_transport() -> None:
    hub = Hub(max_per_tenant=2)
    first = client(Filters("t1"))
    second = client(Filters("t1"), Transport.SSE)
    hub.register(first)
    hub.register(second)
    with pytest.raises(TooManyConnections, match="'t1'"):
        hub.register(client(Filters("t1")))
    hub.register(client(Filters("t2")))
    hub.register(client(Filters(None)))
    assert hub.per_tenant() == {"t1": 2, "t2": 1, "*": 1}
    hub.unregister(first)
    assert hub.per_tenant() == {"t1": 1, "t2": 1, "*": 1}
    hub.register(client(Filters("t1")))


def test_each_record_goes_to_matching_clients_only_and_is_encoded_once() -> None:
    hub = Hub(max_per_tenant=10)
    t1 = client(Filters("t1"))
    t1_dev2 = client(Filters("t1", frozenset({"DEV-2"})))
    t1_humidity = client(Filters("t1", None, frozenset({"humidity"})))
    t2 = client(Filters("t2"))
    admin = client(Filters(None))
    for c in (t1, t1_dev2, t1_humidity, t2, admin):
        hub.register(c)

    hub.publish_kafka("c", 1, 40, record("t1", "DEV-1", "temperature"), SENT_AT)
    hub.publish_kafka("c", 2, 7, record("t2", "DEV-9", "humidity"), SENT_AT)

    (for_t1,) = taken(t1)
    assert taken(t1_dev2) == []
    assert taken(t1_humidity) == []
    (for_t2,) = taken(t2)
    admin_events = taken(admin)
    assert [e.offset for e in admin_events] == [40, 7]
    # One object per record, the same for every client: encoded once.
    assert admin_events[0] is for_t1
    assert admin_events[1] is for_t2
    assert for_t1.text is not None and for_t1.sse is None
    envelope = json.loads(for_t1.text)
    assert envelope["event_id"] == "c:1:40"
    assert envelope["sent_at"] == SENT_AT
    assert envelope["data"] == json.loads(record("t1", "DEV-1", "temperature"))


def test_sse_frames_carry_the_stream_position_after_the_event() -> None:
    hub = Hub(max_per_tenant=10)
    sse = client(Filters("t1"), Transport.SSE)
    hub.register(sse)
    hub.positions = {"c": {0: 10, 1: 20}}
    hub.publish_kafka("c", 1, 20, record(), SENT_AT)
    hub.publish_kafka("c", 0, 10, record("t2"), SENT_AT)  # not for this client
    hub.publish_kafka("c", 1, 21, record(), SENT_AT)
    first, second = taken(sse)
    assert first.sse is not None and second.sse is not None
    ids = [frame.split(b"\n")[0] for frame in (first.sse, second.sse)]
    assert ids == [b"id: c@0:10,1:21", b"id: c@0:11,1:22"]
    assert decode_cursor(ids[1].decode()[4:]) == hub.positions


def test_malformed_records_are_counted_and_skipped_but_advance_the_position() -> None:
    hub = Hub(max_per_tenant=10)
    admin = client(Filters(None))
    hub.register(admin)
    hub.publish_kafka("c", 0, 5, b"{oops", SENT_AT)
    hub.publish_kafka("c", 0, 6, b'{"tenant": "t1"}', SENT_AT)
    hub.publish_kafka("c", 0, 7, record(), SENT_AT)
    assert hub.malformed.total == 2
    assert [e.offset for e in taken(admin)] == [7]
    assert hub.positions == {"c": {0: 8}}


def test_no_client_means_no_encoding_work() -> None:
    hub = Hub(max_per_tenant=10)
    hub.register(client(Filters("t2")))
    hub.publish_kafka("c", 0, 0, record("t1"), SENT_AT)
    assert hub.positions == {"c": {0: 1}}


def test_skip_below_hides_live_events_a_replay_already_sent() -> None:
    hub = Hub(max_per_tenant=10)
    sse = client(Filters("t1"), Transport.SSE)
    sse.skip_below[("c", 0)] = 12
    hub.register(sse)
    for offset in (10, 11, 12, 13):
        hub.publish_kafka("c", 0, offset, record(), SENT_AT)
    assert [e.offset for e in taken(sse)] == [12, 13]


def test_drops_and_slow_disconnects_are_counted_for_metrics() -> None:
    hub = Hub(max_per_tenant=10)
    slow = Client(Transport.WEBSOCKET, Filters("t1"), "client", ClientQueue(1, max_drops=2))
    hub.register(slow)
    for offset in range(5):
        hub.publish_kafka("c", 0, offset, record(), SENT_AT)
    assert hub.events_dropped == 3
    assert slow.queue.kicked
    hub.unregister(slow)
    assert hub.slow_disconnects == 1


# --------------------------------------------------------------------------- edge-local mode
def test_local_records_flow_while_kafka_does_not_and_are_not_repeated_after() -> None:
    hub = Hub(max_per_tenant=10)
    watcher = client(Filters("t1"), Transport.SSE)
    hub.register(watcher)
    first, second = record(device="DEV-1"), record(device="DEV-2")

    hub.publish_local(first, SENT_AT)
    (local,) = taken(watcher)
    assert json.loads(local.json)["event_id"] == "local:1"
    assert local.sse is not None and not local.sse.startswith(b"id:")  # nothing to resume from

    hub.kafka_feeding = True
    hub.publish_local(second, SENT_AT)  # Kafka feeds: it will bring this one
    assert taken(watcher) == []
    hub.publish_kafka("c", 0, 0, first, SENT_AT)  # delivered locally already
    hub.publish_kafka("c", 0, 1, second, SENT_AT)
    assert [json.loads(e.json)["event_id"] for e in taken(watcher)] == ["c:0:1"]
    hub.publish_kafka("c", 0, 2, first, SENT_AT)  # the same bytes again: a new record
    assert len(taken(watcher)) == 1


def ids(c: Client) -> list[str]:
    return [json.loads(e.json)["event_id"] for e in taken(c)]


def test_byte_identical_local_records_are_each_recognised_once_from_kafka() -> None:
    """Two readings of one device, metric, value and millisecond are the same
    bytes: both local deliveries match one Kafka copy each, a third copy is new."""
    hub = Hub(max_per_tenant=10)
    watcher = client(Filters("t1"))
    hub.register(watcher)
    twin = record()
    hub.publish_local(twin, SENT_AT)
    hub.publish_local(twin, SENT_AT)
    assert ids(watcher) == ["local:1", "local:2"]
    hub.kafka_feeding = True
    for offset in range(3):
        hub.publish_kafka("c", 0, offset, twin, SENT_AT)
    assert ids(watcher) == ["c:0:2"]


def test_a_client_that_came_after_a_local_delivery_gets_the_kafka_copy() -> None:
    """Recognising a local record again from Kafka spares only the clients that
    were there to get it locally; a later client (or one restarted for its
    SSE replay) still gets it, once."""
    hub = Hub(max_per_tenant=10)
    early = client(Filters("t1"))
    hub.register(early)
    hub.publish_local(record(device="DEV-1"), SENT_AT)
    late = client(Filters("t1"), Transport.SSE)
    hub.register(late)
    hub.publish_local(record(device="DEV-2"), SENT_AT)
    assert ids(early) == ["local:1", "local:2"]
    assert ids(late) == ["local:2"]
    restarted = client(Filters("t1"), Transport.SSE)
    hub.register(restarted)
    hub.publish_local(record(device="DEV-3"), SENT_AT)
    assert ids(restarted) == ["local:3"]
    assert ids(early) == ids(late) == ["local:3"]
    assert hub.restart(restarted) == {}
    assert restarted.queue._items == deque()
    hub.kafka_feeding = True
    for offset, device in enumerate(("DEV-1", "DEV-2", "DEV-3")):
        hub.publish_kafka("c", 0, offset, record(device=device), SENT_AT)
    assert ids(early) == []
    assert ids(late) == ["c:0:0"]
    assert ids(restarted) == ["c:0:0", "c:0:1", "c:0:2"]


def test_local_memory_is_bounded() -> None:
    hub = Hub(max_per_tenant=10)
    watcher = client(Filters("t1"), capacity=LOCAL_MEMORY + 10)
    hub.register(watcher)
    twin = record()
    for _ in range(LOCAL_MEMORY + 5):
        hub.publish_local(twin, SENT_AT)
    assert len(hub._local_recent) == LOCAL_MEMORY
    assert len(hub._local_values[twin]) == LOCAL_MEMORY


def test_without_fallback_local_records_are_ignored() -> None:
    hub = Hub(max_per_tenant=10, local_fallback=False)
    watcher = client(Filters("t1"))
    hub.register(watcher)
    hub.publish_local(record(), SENT_AT)
    assert taken(watcher) == []
