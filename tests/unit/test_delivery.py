"""The ingest path's at-least-once rules (docs/operations.md), as unit tests of
the sans-IO :class:`bridge.core.delivery.Delivery`, without brokers: each rule
(numbered as in that module's docstring) and the orders that are hard to
produce on purpose.  Random interleavings: test_delivery_properties.py.

1 acknowledged once held: ``..._once_every_record_is_delivered``,
  ``..._without_records_...``, ``..._synced_to_the_spool_...``,
  ``test_one_record_in_kafka_one_in_the_spool``, ``test_a_record_counts_once``;
2 sessions: ``..._of_a_lost_session_...``, ``..._of_a_newer_session_...``;
3 spool active until drained: ``test_kafka_back_mid_drain_...``;
4 a full producer queue: ``..._sends_records_to_the_spool``,
  ``..._without_a_spool_a_full_queue_...``;
5 a failed delivery: ``test_one_record_in_kafka_one_in_the_spool``,
  ``..._produced_again_even_qos0``, ``test_a_replaced_producer_...``;
6 a full or unavailable spool: ``test_a_full_spool_...``,
  ``test_an_unavailable_spool_...``, ``test_a_spool_that_recovers_...``;
7 bypass and recovery: ``test_records_waiting_for_an_unavailable_spool_...``,
  ``test_the_spool_recovering_...``;
8 shutdown: ``test_shutdown_with_records_in_every_state_...``,
  ``test_sigterm_with_kafka_down_and_the_spool_full_...``;
races: ``test_a_late_sync_...``, ``test_a_late_delivery_...``;
the direct path (the same rules, one object per message): ``..._direct_...``.
"""

from __future__ import annotations

from typing import TypeAlias

from bridge.core.delivery import (
    QUEUE_FULL_HINT,
    SPOOL_REFUSING_HINT,
    Action,
    Delivery,
    Dropped,
    Message,
    Produce,
    Settled,
    SpoolActive,
    SpoolBypassed,
    SpoolDrained,
    State,
    ToSpool,
    Tracked,
)

Actions: TypeAlias = "list[Action[str]]"


def produced(actions: Actions) -> list[Tracked[str]]:
    return [a.item for a in actions if isinstance(a, Produce)]


def spooled(actions: Actions) -> list[Tracked[str]]:
    return [a.item for a in actions if isinstance(a, ToSpool)]


def settled(actions: Actions) -> list[Settled]:
    return [a for a in actions if isinstance(a, Settled)]


def acks(actions: Actions) -> list[tuple[int, int | None]]:
    return [(a.message.generation, a.message.mid) for a in settled(actions) if a.ack]


def report_direct(d: Delivery[str], message: Message) -> bool | None:
    """What the adapter does with a successful report of a direct record:
    count it down in the message, and at zero ask the machine whether to
    acknowledge (None: records of the message are still outstanding)."""
    message.remaining -= 1
    return None if message.remaining else d.delivered_direct(message)


def test_qos1_is_acknowledged_once_every_record_is_delivered() -> None:
    d: Delivery[str] = Delivery(spool=True)
    a, b, c = produced(d.arrived(1, 7, 1, ["clean", "raw", "dead"]))
    assert d.pending == 1
    assert d.delivered(a) == []
    assert d.delivered(c) == []
    assert acks(d.delivered(b)) == [(1, 7)]
    assert d.pending == 0


def test_a_message_without_records_is_acknowledged_at_once() -> None:
    d: Delivery[str] = Delivery(spool=True)
    assert acks(d.arrived(1, 3, 1, [])) == [(1, 3)]
    [quiet] = settled(d.arrived(1, 4, 0, []))
    assert not quiet.ack and d.pending == 0


def test_qos0_is_settled_but_never_acknowledged() -> None:
    d: Delivery[str] = Delivery(spool=False)
    [item] = produced(d.arrived(1, 9, 0, ["clean"]))
    [done] = settled(d.delivered(item))
    assert not done.ack and done.message.mid is None


def test_a_record_synced_to_the_spool_counts_as_held() -> None:
    d: Delivery[str] = Delivery(spool=True)
    assert d.kafka_unreachable() == [SpoolActive("Kafka is unreachable")]
    a, b = spooled(d.arrived(1, 5, 1, ["clean", "raw"]))
    assert d.synced([a]) == []
    assert acks(d.synced([b])) == [(1, 5)]


def test_one_record_in_kafka_one_in_the_spool() -> None:
    d: Delivery[str] = Delivery(spool=True)
    a, b = produced(d.arrived(1, 5, 1, ["clean", "raw"]))
    assert d.delivered(a) == []
    out = d.failed(b)
    assert out == [SpoolActive("Kafka delivery failed"), ToSpool(b)]
    assert acks(d.synced([b])) == [(1, 5)]


def test_a_report_for_a_message_of_a_lost_session_is_not_acknowledged() -> None:
    d: Delivery[str] = Delivery(spool=True)
    [old] = produced(d.arrived(1, 7, 1, ["clean"]))
    d.session_lost(2)
    [done] = settled(d.delivered(old))
    assert not done.ack  # mid 7 of session 1 means nothing on session 2
    assert d.pending == 0
    # The broker delivers it again on the new session: produced again, acked there.
    [again] = produced(d.arrived(2, 7, 1, ["clean"]))
    assert acks(d.delivered(again)) == [(2, 7)]


def test_a_message_of_a_newer_session_makes_older_ones_stale() -> None:
    d: Delivery[str] = Delivery(spool=False)
    [old] = produced(d.arrived(1, 1, 1, ["clean"]))
    [new] = produced(d.arrived(2, 1, 1, ["clean"]))
    assert acks(d.delivered(old)) == []
    assert acks(d.delivered(new)) == [(2, 1)]


def test_kafka_back_mid_drain_keeps_the_spool_until_it_is_empty() -> None:
    d: Delivery[str] = Delivery(spool=True, backlog=True)
    [first] = spooled(d.arrived(1, 1, 1, ["clean"]))
    d.kafka_back()
    # Kafka answers, but the spool still holds older records: new ones queue behind them.
    [second] = spooled(d.arrived(1, 2, 1, ["clean"]))
    assert d.drained() == []  # two records still wait for the writer
    d.synced([first, second])
    assert d.drained() == [SpoolDrained()]
    assert not d.active
    assert len(produced(d.arrived(1, 3, 1, ["clean"]))) == 1


def test_a_full_producer_queue_sends_records_to_the_spool() -> None:
    d: Delivery[str] = Delivery(spool=True)
    [item] = produced(d.arrived(1, 1, 0, ["clean"]))
    assert d.not_taken(item) == [SpoolActive("the Kafka producer queue is full"), ToSpool(item)]
    assert spooled(d.arrived(1, 2, 1, ["clean"]))


def test_without_a_spool_a_full_queue_holds_qos1_in_order_and_drops_qos0() -> None:
    d: Delivery[str] = Delivery(spool=False)
    [a] = produced(d.arrived(1, 1, 1, ["a"]))
    assert d.not_taken(a) == []
    assert d.overflow == 1
    # Later records queue behind it, without being tried.
    assert d.arrived(1, 2, 1, ["b"]) == []
    assert d.arrived(1, 3, 1, ["c"]) == []
    out = d.arrived(1, 4, 0, ["q0"])
    [drop] = [x for x in out if isinstance(x, Dropped)]
    assert drop.hint == QUEUE_FULL_HINT
    assert not settled(out)[0].ack
    retry = d.reports_done()
    assert [x.item.record for x in retry if isinstance(x, Produce) and x.retry] == ["a", "b", "c"]
    # The queue took a, refused b: b and c wait again, in order.
    d.retry_refused(produced(retry)[1])
    assert d.overflow == 2
    assert [x.item.record for x in d.reports_done() if isinstance(x, Produce)] == ["b", "c"]


def test_without_a_spool_a_failed_record_is_produced_again_even_qos0() -> None:
    d: Delivery[str] = Delivery(spool=False)
    [item] = produced(d.arrived(1, 1, 0, ["clean"]))
    assert d.failed(item) == [Produce(item)]
    assert d.not_taken(item) == []  # queue full: held, not dropped, it failed once
    assert d.overflow == 1
    assert produced(d.reports_done()) == [item]
    assert settled(d.delivered(item))


def test_a_full_spool_drops_qos0_and_holds_qos1() -> None:
    d: Delivery[str] = Delivery(spool=True)
    d.kafka_unreachable()
    d.spool_full()
    out = d.arrived(1, 1, 0, ["q0"])
    assert [x.hint for x in out if isinstance(x, Dropped)] == [SPOOL_REFUSING_HINT]
    [held] = spooled(d.arrived(1, 2, 1, ["q1"]))  # waits for room, unacknowledged
    assert d.pending == 1
    d.spool_accepting()
    assert spooled(d.arrived(1, 3, 0, ["q0"]))
    assert acks(d.synced([held])) == [(1, 2)]


def test_an_unavailable_spool_with_nothing_in_it_is_out_of_the_way() -> None:
    d: Delivery[str] = Delivery(spool=True, spool_unavailable=True)
    assert d.kafka_unreachable() == []  # cannot take records: no activation
    [a] = produced(d.arrived(1, 1, 1, ["a"]))
    assert d.not_taken(a) == []  # as without a spool: held in memory
    assert d.overflow == 1
    assert [type(x) for x in d.arrived(1, 2, 0, ["q0"])] == [Dropped, Settled]


def test_records_waiting_for_an_unavailable_spool_go_to_kafka_once_it_is_empty() -> None:
    d: Delivery[str] = Delivery(spool=True, backlog=True)
    a, b = spooled(d.arrived(1, 1, 1, ["a", "b"]))
    d.spool_unavailable()
    # Still active (a backlog drains first): QoS 1 waits, QoS 0 is dropped.
    [c] = spooled(d.arrived(1, 2, 1, ["c"]))
    assert [type(x) for x in d.arrived(1, 3, 0, ["q0"])] == [Dropped, Settled]
    out = d.drained()
    assert out[0] == SpoolBypassed(3)
    assert produced(out) == [a, b, c]
    assert not d.active
    assert acks(d.delivered(a) + d.delivered(b) + d.delivered(c)) == [(1, 1), (1, 2)]


def test_a_spool_that_recovers_from_its_disk_failing_is_not_taken_as_full() -> None:
    """Full before its disk failed: whether it has room is known again only
    after its next append, so QoS 0 is spooled again meanwhile."""
    d: Delivery[str] = Delivery(spool=True)
    d.kafka_unreachable()
    d.spool_full()
    d.spool_unavailable()
    d.spool_available()
    assert spooled(d.arrived(1, 1, 0, ["q0"]))


def test_the_spool_recovering_while_kafka_is_down_takes_records_again() -> None:
    d: Delivery[str] = Delivery(spool=True, spool_unavailable=True)
    d.kafka_unreachable()
    assert d.spool_available() == [SpoolActive("Kafka is unreachable")]
    assert spooled(d.arrived(1, 1, 1, ["a"]))


def test_the_spool_recovering_while_kafka_is_up_stays_idle() -> None:
    d: Delivery[str] = Delivery(spool=True, spool_unavailable=True)
    assert d.spool_available() == []
    assert produced(d.arrived(1, 1, 1, ["a"]))


def test_a_late_sync_of_a_record_handed_back_to_kafka_is_ignored() -> None:
    """The spool sync races a Kafka delivery of the same record: whichever
    comes second does not count it again."""
    d: Delivery[str] = Delivery(spool=True, backlog=True)
    item, other = spooled(d.arrived(1, 1, 1, ["a", "b"]))
    d.spool_unavailable()
    d.drained()  # handed to Kafka
    assert d.synced([item]) == []  # the write that lost the race
    assert d.stale == 1
    assert d.delivered(item) == []
    assert acks(d.delivered(other)) == [(1, 1)]


def test_a_late_delivery_of_a_record_that_went_to_the_spool_is_ignored() -> None:
    d: Delivery[str] = Delivery(spool=True)
    [item] = produced(d.arrived(1, 1, 1, ["a"]))
    d.failed(item)  # timed out: to the spool
    assert d.delivered(item) == []  # a report that cannot count twice
    assert acks(d.synced([item])) == [(1, 1)]
    assert d.synced([item]) == [] and d.delivered(item) == []
    assert d.stale == 3


def test_shutdown_with_records_in_every_state_and_a_spool() -> None:
    d: Delivery[str] = Delivery(spool=True)
    [delivering] = produced(d.arrived(1, 1, 1, ["a"]))
    [failing] = produced(d.arrived(1, 2, 1, ["b"]))
    [done] = produced(d.arrived(1, 3, 1, ["c"]))
    d.delivered(done)
    d.kafka_unreachable()
    [writing] = spooled(d.arrived(1, 4, 1, ["d"]))
    assert d.shutdown() == []
    assert d.arrived(1, 5, 1, ["e"]) == []  # not taken: the broker delivers it again
    assert d.pending == 3
    # The flush deadline passed: the purge fails what Kafka did not confirm.
    assert d.failed(failing) == [ToSpool(failing)]
    assert acks(d.delivered(delivering)) == [(1, 1)]
    assert acks(d.synced([writing, failing])) == [(1, 4), (1, 2)]
    assert d.reports_done() == [] and d.pending == 0


def test_shutdown_with_records_in_every_state_without_a_spool() -> None:
    d: Delivery[str] = Delivery(spool=False)
    [purged] = produced(d.arrived(1, 2, 1, ["b"]))
    [delivering] = produced(d.arrived(1, 3, 1, ["c"]))
    [waiting] = produced(d.arrived(1, 1, 1, ["a"]))
    d.not_taken(waiting)  # in the overflow
    d.shutdown()
    assert waiting.state is State.ABANDONED
    assert d.failed(purged) == []  # nothing is produced any more
    assert purged.state is State.ABANDONED
    assert acks(d.delivered(delivering)) == [(1, 3)]
    assert d.reports_done() == []
    assert d.pending == 2  # unacknowledged: the broker delivers them to the next run


def test_a_record_counts_once() -> None:
    d: Delivery[str] = Delivery(spool=False)
    [item] = produced(d.arrived(1, 1, 1, ["a"]))
    assert acks(d.delivered(item)) == [(1, 1)]
    assert d.delivered(item) == [] and d.failed(item) == [] and d.not_taken(item) == []
    assert d.stale == 3


def test_a_replaced_producer_fails_every_record_in_flight_to_the_spool_in_order() -> None:
    """kafka.producer_replaced: the old handle's records are purged, each with
    an error report; they are spooled in their order (or produced again)."""
    d: Delivery[str] = Delivery(spool=True)
    items = produced(d.arrived(1, 1, 1, ["a", "b"]) + d.arrived(1, 2, 0, ["c"]))
    out: Actions = []
    for item in items:
        out += d.failed(item)
    assert out[0] == SpoolActive("Kafka delivery failed")
    assert spooled(out) == items
    assert acks(d.synced(items)) == [(1, 1)]


def test_sigterm_with_kafka_down_and_the_spool_full_leaves_qos1_unacknowledged() -> None:
    d: Delivery[str] = Delivery(spool=True)
    [q1] = produced(d.arrived(1, 1, 1, ["a"]))
    [q0] = produced(d.arrived(1, 2, 0, ["b"]))
    d.kafka_unreachable()
    d.spool_full()
    d.shutdown()
    assert d.failed(q1) == [ToSpool(q1)]  # waits for room that does not come
    assert [type(x) for x in d.failed(q0)] == [Dropped, Settled]
    assert d.pending == 1  # never acknowledged: the broker delivers it to the next run


def test_the_direct_path_is_one_message_object_and_a_count() -> None:
    d: Delivery[str] = Delivery(spool=True)
    message = Message(1, 7)
    assert d.arrive(message, ["clean", "raw"]) is None  # produce both, the message waits
    assert report_direct(d, message) is None
    assert report_direct(d, message) is True
    assert d.pending == 0


def test_a_direct_record_that_fails_leaves_the_direct_path() -> None:
    d: Delivery[str] = Delivery(spool=True)
    message = Message(1, 7)
    assert d.arrive(message, ["clean", "raw"]) is None
    out = d.failed_direct(message, "raw")
    assert out[0] == SpoolActive("Kafka delivery failed")
    [item] = spooled(out)
    assert report_direct(d, message) is None
    assert acks(d.synced([item])) == [(1, 7)]


def test_a_direct_record_refused_takes_the_ones_after_it_along() -> None:
    """The queue refuses the first record: the second is not tried, it queues
    behind the first (in the overflow without a spool, in the spool with one)."""
    d: Delivery[str] = Delivery(spool=False)
    message = Message(1, 7)
    assert d.arrive(message, ["clean", "raw"]) is None
    assert d.not_taken_direct(message, ["clean", "raw"]) == []
    assert d.overflow == 2
    assert [a.item.record for a in d.reports_done() if isinstance(a, Produce)] == ["clean", "raw"]
    spool: Delivery[str] = Delivery(spool=True)
    message = Message(1, 8)
    assert spool.arrive(message, ["clean", "raw"]) is None
    out = spool.not_taken_direct(message, ["clean", "raw"])
    assert [a.item.record for a in out if isinstance(a, ToSpool)] == ["clean", "raw"]


def test_a_direct_message_of_a_lost_session_is_not_acknowledged() -> None:
    d: Delivery[str] = Delivery(spool=False)
    message = Message(1, 7)
    d.arrive(message, ["clean"])
    d.session_lost(2)
    assert report_direct(d, message) is False


def test_while_the_spool_is_active_nothing_goes_direct() -> None:
    d: Delivery[str] = Delivery(spool=True, backlog=True)
    assert spooled(d.arrive(Message(1, 7), ["clean"]) or [])
