"""Random interleavings of the ingest path's events against
:class:`bridge.core.delivery.Delivery`, driven by a small simulated adapter (a
producer queue that can be full, a spool that can be full or unavailable, a
backlog to drain, sessions that drop), checking the guarantee:

- no packet is acknowledged before every record made from it was delivered by
  Kafka or synced in the spool, nor twice, nor on another session;
- every QoS 1 packet is acknowledged or still pending, never lost: once the
  faults heal and everything is delivered, every packet of the current
  session is acknowledged (after shutdown: or left unacknowledged, for the
  broker to deliver again);
- nothing is produced twice except after a reported failure.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

import bridge.core.delivery as core
from tests.unit.test_delivery import report_direct

EVENTS = (
    "arrive",
    "deliver",
    "fail",
    "sync",
    "reports_done",
    "queue_full",
    "queue_room",
    "kafka_down",
    "kafka_up",
    "spool_full",
    "spool_unavailable",
    "spool_available",
    "drain",
    "session_lost",
    "late_report",
    "arrive_direct",
)


class Adapter:
    """What ingest, store_forward and the producer would do, in memory."""

    def __init__(self, spool: bool, backlog: int) -> None:
        self.d: core.Delivery[int] = core.Delivery(spool=spool, backlog=backlog > 0)
        self.spool = spool
        self.backlog = backlog  # records in the spool, to drain
        self.queue_full = False
        self.spool_refuses: str | None = None  # "full" or "unavailable"
        self.generation = 1
        # Produced, report outstanding: a tracked record, or one of a direct message.
        self.in_kafka: list[core.Tracked[int] | tuple[core.Message, int]] = []
        self.to_write: list[core.Tracked[int]] = []  # the spool writer's queue
        self.safe: set[int] = set()  # records delivered or synced
        self.produced: Counter[int] = Counter()
        self.failures: Counter[int] = Counter()
        self.records_of: dict[int, list[int]] = {}
        self.qos_of: dict[int, int] = {}
        self.generation_of: dict[int, int] = {}
        self.acked: set[int] = set()
        self.settled: set[int] = set()
        self.next_record = 0
        self.seen: list[core.Tracked[int]] = []  # every record handed out, for late reports

    # ------------------------------------------------------------------ actions
    def run(self, actions: list[core.Action[int]]) -> None:
        for action in actions:
            if isinstance(action, core.Produce):
                if self.queue_full:
                    if action.retry:
                        self.d.retry_refused(action.item)
                        return  # the rest of the retry stays in the overflow
                    self.run(self.d.not_taken(action.item))
                    continue
                self.produce(action.item.record)
                self.in_kafka.append(action.item)
                self.seen.append(action.item)
            elif isinstance(action, core.ToSpool):
                assert self.spool
                self.to_write.append(action.item)
                self.seen.append(action.item)
            elif isinstance(action, core.SpoolBypassed):
                assert action.records == len(self.to_write)
                self.to_write = []
            elif isinstance(action, core.Dropped):
                assert self.qos_of[action.item.message.context] == 0  # type: ignore[index]
            elif isinstance(action, core.Settled):
                self.settle(action)

    def produce(self, record: int) -> None:
        self.produced[record] += 1
        assert self.produced[record] <= 1 + self.failures[record], record

    def new_packet(self, n: int) -> tuple[int, list[int]]:
        packet = len(self.records_of)
        records = list(range(self.next_record, self.next_record + n % 4))
        self.next_record += len(records)
        self.records_of[packet] = records
        self.qos_of[packet] = n % 2
        self.generation_of[packet] = self.generation
        return packet, records

    def arrive_direct(self, n: int) -> None:
        """As ingest would: the direct path unless the machine says otherwise."""
        packet, records = self.new_packet(n)
        message = core.Message(self.generation, packet if n % 2 else None, context=packet)
        actions = self.d.arrive(message, records)
        if actions is not None:
            self.run(actions)
            return
        for i, record in enumerate(records):
            if self.queue_full:
                self.run(self.d.not_taken_direct(message, records[i:]))
                return
            self.produce(record)
            self.in_kafka.append((message, record))

    def report(self, kind: str, n: int) -> None:
        entry = self.in_kafka.pop(n % len(self.in_kafka))
        d = self.d
        if isinstance(entry, tuple):
            message, record = entry
            if kind == "deliver":
                self.safe.add(record)
                ack = report_direct(d, message)
                if ack is not None:
                    self.settle(core.Settled(message, ack))
            else:
                self.failures[record] += 1
                self.run(d.failed_direct(message, record))
        elif kind == "deliver":
            self.safe.add(entry.record)
            self.run(d.delivered(entry))
        else:
            self.failures[entry.record] += 1
            self.run(d.failed(entry))

    def settle(self, action: core.Settled) -> None:
        packet = action.message.context
        assert isinstance(packet, int)
        assert packet not in self.settled
        self.settled.add(packet)
        if not action.ack:
            assert self.qos_of[packet] == 0 or self.generation_of[packet] < self.generation
            return
        assert self.qos_of[packet] == 1
        assert self.generation_of[packet] == self.generation
        assert all(r in self.safe for r in self.records_of[packet]), packet
        self.acked.add(packet)

    # ------------------------------------------------------------------ events
    def event(self, kind: str, n: int) -> None:
        d = self.d
        if kind.startswith("arrive") and d.closing:
            assert d.arrived(self.generation, 0, 1, [0]) == []  # the broker redelivers it
        elif kind == "arrive":
            packet, records = self.new_packet(n)
            self.run(d.arrived(self.generation, packet, n % 2, records, context=packet))
        elif kind == "arrive_direct":
            self.arrive_direct(n)
        elif kind in ("deliver", "fail") and self.in_kafka:
            self.report(kind, n)
        elif kind == "sync" and self.to_write:
            if self.spool_refuses == "full":
                d.spool_full()
            elif self.spool_refuses == "unavailable":
                d.spool_unavailable()
            else:
                written, self.to_write = self.to_write[: n + 1], self.to_write[n + 1 :]
                self.safe.update(item.record for item in written)
                self.backlog += len(written)
                d.spool_accepting()
                self.run(d.synced(written))
        elif kind == "reports_done":
            self.run(d.reports_done())
        elif kind == "queue_full":
            self.queue_full = True
        elif kind == "queue_room":
            self.queue_full = False
        elif kind == "kafka_down":
            self.run(d.kafka_unreachable())
        elif kind == "kafka_up":
            d.kafka_back()
        elif kind == "spool_full" and self.spool:
            self.spool_refuses = "full"
            d.spool_full()
        elif kind == "spool_unavailable" and self.spool:
            self.spool_refuses = "unavailable"
            d.spool_unavailable()
        elif kind == "spool_available":
            if self.spool_refuses == "unavailable":
                self.run(d.spool_available())
            self.spool_refuses = None
        elif kind == "drain":
            if self.backlog:
                self.backlog -= 1
            else:
                self.run(d.drained())
        elif kind == "session_lost":
            self.generation += 1
            d.session_lost(self.generation)
        elif kind == "late_report":
            # A report or sync that lost a race: for a record not (or no longer)
            # with Kafka, or not (or no longer) waiting for the spool.
            busy = self.in_kafka if n % 2 else self.to_write
            late = [item for item in self.seen if all(item is not b for b in busy)]
            if not late:
                return
            item, stale = late[n % len(late)], d.stale
            if n % 2:
                assert d.delivered(item) == [] and d.failed(item) == []
                assert d.stale == stale + 2  # ignored, and counted
            else:
                assert d.synced([item]) == []
                assert d.stale == stale + 1
        elif kind == "shutdown" and not d.closing:
            self.run(d.shutdown())

    def check_nothing_lost(self) -> None:
        """Every QoS 1 packet: acknowledged, pending, or of a lost session."""
        for packet, qos in self.qos_of.items():
            if qos and packet in self.settled:
                assert packet in self.acked or self.generation_of[packet] < self.generation

    def heal(self) -> None:
        """The faults end; deliver and sync everything until nothing moves."""
        self.queue_full = False
        self.d.kafka_back()
        if self.spool_refuses == "unavailable":
            self.run(self.d.spool_available())
        self.spool_refuses = None
        for _ in range(1000):
            if self.in_kafka:
                self.event("deliver", 0)
            elif self.to_write:
                self.event("sync", len(self.to_write))
            elif self.d.overflow and not self.d.closing:
                self.event("reports_done", 0)
            elif self.backlog or self.d.active:
                self.event("drain", 0)
            else:
                return
        raise AssertionError("did not settle")


script = st.lists(st.tuples(st.sampled_from(EVENTS), st.integers(0, 7)), max_size=80)


@settings(max_examples=200, deadline=2000)
@given(st.booleans(), st.integers(0, 2), script, st.none() | st.integers(0, 80))
def test_random_interleavings_keep_the_guarantee(
    spool: bool, backlog: int, events: list[tuple[str, int]], shutdown_at: int | None
) -> None:
    adapter = Adapter(spool, backlog if spool else 0)
    for index, (kind, n) in enumerate(events):
        if index == shutdown_at:
            adapter.event("shutdown", 0)
        adapter.event(kind, n)
        adapter.check_nothing_lost()
    adapter.heal()
    adapter.check_nothing_lost()
    current = [p for p, g in adapter.generation_of.items() if g == adapter.generation]
    if not adapter.d.closing:
        assert adapter.d.pending == 0
        assert adapter.settled == set(adapter.qos_of)
        assert all(p in adapter.acked for p in current if adapter.qos_of[p])
        assert adapter.d.overflow == 0
    else:
        # Shutdown abandons what it cannot hold: unacknowledged, never acked wrongly.
        assert adapter.d.pending == len(set(adapter.qos_of) - adapter.settled)
