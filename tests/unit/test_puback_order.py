"""PUBACKs leave in arrival order whatever order messages are settled in
(bridge/core/puback_order.py; MQTT 5.0 [MQTT-4.6.0-2])."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.mqtt_codec import puback
from bridge.core.puback_order import PubackOrder


def _mids(acks: bytes) -> list[int]:
    """The packet ids of a run of PUBACKs."""
    assert len(acks) % 4 == 0, acks
    for at in range(0, len(acks), 4):
        assert acks[at : at + 2] == b"\x40\x02", acks
    return [int.from_bytes(acks[at + 2 : at + 4], "big") for at in range(0, len(acks), 4)]


def test_in_order_settling_acknowledges_each_at_once() -> None:
    order = PubackOrder()
    order.arrived([1, 2, 3])
    assert order.settled(1) == puback(1)
    assert order.settled(2) == puback(2)
    assert order.settled(3) == puback(3)
    assert order.waiting == 0


def test_a_later_message_waits_for_an_earlier_one() -> None:
    order = PubackOrder()
    order.arrived([10, 11, 12, 13])
    assert order.settled(12) == b""
    assert order.settled(11) == b""
    assert order.waiting == 2
    # 10 releases itself and the two behind it, not 13, which is not settled.
    assert _mids(order.settled(10)) == [10, 11, 12]
    assert order.waiting == 0
    assert order.settled(13) == puback(13)


def test_messages_arriving_later_queue_behind_the_unsettled_one() -> None:
    order = PubackOrder()
    order.arrived([1])
    order.arrived([2, 3])
    assert order.settled(3) == b""
    assert order.settled(2) == b""
    assert _mids(order.settled(1)) == [1, 2, 3]


def test_a_reused_id_gets_one_puback_per_message() -> None:
    """A broker that sends a second message under an id still in flight (against
    the protocol): each message gets its PUBACK, in arrival order."""
    order = PubackOrder()
    order.arrived([5, 6, 5])
    assert order.settled(6) == b""
    assert _mids(order.settled(5)) == [5, 6]
    assert order.settled(5) == puback(5)
    assert order.waiting == 0


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_settling_order_releases_in_arrival_order(data: st.DataObject) -> None:
    """Arrivals in batches, settling in any order interleaved with them, ids
    reused at will: what leaves is always the arrival order, and a PUBACK never
    leaves before every message up to it is settled."""
    mids = data.draw(st.lists(st.integers(1, 8), max_size=40), label="arrival order")
    order = PubackOrder()
    arrived = 0
    settled: list[int] = []  # indexes into mids, settled so far
    unsettled: list[int] = []
    sent: list[int] = []
    while arrived < len(mids) or unsettled:
        if arrived < len(mids) and (not unsettled or data.draw(st.booleans())):
            batch = data.draw(st.integers(1, len(mids) - arrived), label="batch")
            order.arrived(mids[arrived : arrived + batch])
            unsettled += range(arrived, arrived + batch)
            arrived += batch
            continue
        index = unsettled.pop(data.draw(st.integers(0, len(unsettled) - 1), label="settle"))
        settled.append(index)
        sent += _mids(order.settled(mids[index]))
        # Released: a prefix of the arrivals, never beyond what is settled as a
        # multiset of ids (ids are interchangeable on the wire).
        assert sent == mids[: len(sent)]
        for mid in set(sent):
            assert sent.count(mid) <= sum(1 for i in settled if mids[i] == mid)
    assert sent == mids
    assert order.waiting == 0


@settings(max_examples=100, deadline=None)
@given(st.permutations(list(range(1, 30))))
def test_distinct_ids_wait_exactly_for_the_first_unsettled(settling: list[int]) -> None:
    """With distinct ids the released prefix is exactly the arrivals up to the
    first one not settled yet."""
    order = PubackOrder()
    order.arrived(range(1, 30))
    done: set[int] = set()
    sent: list[int] = []
    for mid in settling:
        done.add(mid)
        sent += _mids(order.settled(mid))
        expected = 0
        while expected + 1 in done:
            expected += 1
        assert sent == list(range(1, expected + 1))
        assert order.waiting == len(done) - expected
