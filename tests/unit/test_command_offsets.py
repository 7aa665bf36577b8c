"""The command path's commit rule, without brokers: an offset is committed only
when every earlier record of its partition was acknowledged (PUBACK) or
dead-lettered, in whatever order the acknowledgements come back."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.coerce import InputRejected
from bridge.core.command_offsets import CommandOffsets, Commit, InFlight, ProduceDeadLetter, Publish
from bridge.core.command_plan import CommandPlan, compile_command
from bridge.core.settings import CommandMapping

GOOD = b'{"tenant": "t1", "device": "d1", "cmd": "reboot"}'
BAD = b"not json"


def offsets() -> CommandOffsets:
    plan, errors = compile_command(CommandMapping(), "commands[0]")
    assert plan is not None, errors
    return CommandOffsets(plan)


def consume(machine: CommandOffsets, offset: int, value: bytes = GOOD, partition: int = 0) -> Any:
    action = machine.consumed("cmd", partition, offset, value, [])
    assert action is not None
    return action


def test_a_good_record_is_published_a_bad_one_dead_lettered() -> None:
    machine = offsets()
    publish = consume(machine, 0)
    assert isinstance(publish, Publish)
    assert publish.message.topic == "tenant/t1/device/d1/command"
    dead = consume(machine, 1, BAD)
    assert isinstance(dead, ProduceDeadLetter)
    assert dead.refusal.reason == "invalid_json"


def test_nothing_is_committed_before_an_acknowledgement() -> None:
    machine = offsets()
    consume(machine, 0)
    assert machine.commits() == []


def test_out_of_order_acknowledgements_commit_only_the_done_prefix() -> None:
    machine = offsets()
    first, second, third = (consume(machine, n).record for n in (10, 11, 12))
    machine.acknowledged(third)
    machine.acknowledged(second)
    assert machine.commits() == []  # 10 still waits for its PUBACK
    machine.acknowledged(first)
    assert machine.commits() == [Commit("cmd", 0, 13)]
    assert machine.commits() == []  # committed once
    assert machine.in_flight == 0


def test_partitions_are_independent() -> None:
    machine = offsets()
    a = consume(machine, 5, partition=0).record
    consume(machine, 7, partition=1)
    machine.acknowledged(a)
    assert machine.commits() == [Commit("cmd", 0, 6)]


def test_a_dead_letter_counts_once_kafka_delivered_it() -> None:
    machine = offsets()
    dead = consume(machine, 0, BAD)
    publish = consume(machine, 1)
    machine.acknowledged(publish.record)
    assert machine.commits() == []
    machine.acknowledged(dead.record)
    assert machine.commits() == [Commit("cmd", 0, 2)]


def test_a_failed_dead_letter_is_made_again_and_holds_its_offset() -> None:
    machine = offsets()
    dead = consume(machine, 0, BAD)
    assert machine.dead_letter_failed(dead) == dead
    assert machine.commits() == []
    machine.dead_letter_not_taken(dead)  # the producer's queue is full
    assert machine.retries() == [dead]
    assert machine.retries() == []
    machine.acknowledged(dead.record)
    assert machine.commits() == [Commit("cmd", 0, 1)]


def test_revoked_partitions_are_forgotten_and_late_acknowledgements_ignored() -> None:
    machine = offsets()
    old = consume(machine, 3).record
    dead = consume(machine, 4, BAD)
    machine.dead_letter_not_taken(dead)
    machine.revoked([("cmd", 0)])
    assert machine.in_flight == 0
    assert machine.retries() == []  # another consumer makes it now
    assert machine.dead_letter_failed(dead) is None
    # Assigned back: consumption restarts at the committed offset.
    again = consume(machine, 3).record
    machine.acknowledged(old)  # the PUBACK of the publish before the rebalance
    assert machine.commits() == []
    machine.acknowledged(again)
    assert machine.commits() == [Commit("cmd", 0, 4)]


def test_shutdown_commits_the_done_prefix_and_takes_nothing_more() -> None:
    machine = offsets()
    done = consume(machine, 0).record
    consume(machine, 1)
    machine.acknowledged(done)
    assert machine.shutdown() == [Commit("cmd", 0, 1)]
    assert machine.consumed("cmd", 0, 2, GOOD, []) is None
    assert machine.commits() == []


events = st.lists(
    st.one_of(
        st.tuples(st.just("consume"), st.integers(0, 2), st.booleans()),
        st.tuples(st.just("ack"), st.integers(0, 50), st.booleans()),
        st.tuples(st.just("fail"), st.integers(0, 50), st.booleans()),
        st.tuples(st.just("revoke"), st.integers(0, 2), st.booleans()),
        st.tuples(st.just("commit"), st.integers(0, 0), st.booleans()),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(events)
def test_random_interleavings_never_commit_past_an_unacknowledged_record(
    script: list[tuple[str, int, bool]],
) -> None:
    """Invariants: a commit never passes a record of this assignment that is
    not acknowledged; once everything is acknowledged, everything consumed
    since the last revocation is committed."""
    machine = offsets()
    next_offset = {p: 0 for p in range(3)}
    owned: dict[int, list[InFlight]] = {p: [] for p in range(3)}
    acked: set[int] = set()
    sent: list[InFlight] = []
    committed = {p: 0 for p in range(3)}

    def check(commits: list[Commit]) -> None:
        for commit in commits:
            p = commit.partition
            assert commit.offset > committed[p]
            for record in owned[p]:
                if record.offset < commit.offset:
                    assert id(record) in acked, (record.offset, commit)
            committed[p] = commit.offset

    for kind, n, flag in script:
        if kind == "consume":
            action = consume(machine, next_offset[n], GOOD if flag else BAD, partition=n)
            next_offset[n] += 1
            owned[n].append(action.record)
            sent.append(action.record)
        elif kind == "ack" and sent:
            record = sent[n % len(sent)]
            machine.acknowledged(record)
            acked.add(id(record))
        elif kind == "fail" and sent:
            record = sent[n % len(sent)]
            if id(record) not in acked:
                machine.dead_letter_not_taken(
                    ProduceDeadLetter(record, InputRejected("invalid_json", "test"))
                )
        elif kind == "revoke":
            machine.revoked([("cmd", n)])
            owned[n] = []
            # Consumption resumes at the last commit.
            next_offset[n] = committed[n]
        elif kind == "commit":
            check(machine.commits())
    for records in owned.values():
        for record in records:
            machine.acknowledged(record)
            acked.add(id(record))
    check(machine.commits())
    for p, records in owned.items():
        if records:
            assert committed[p] == records[-1].offset + 1
    assert machine.in_flight == 0


def test_a_record_nested_too_deep_is_a_dead_letter_not_a_crash() -> None:
    """3,000 nested arrays made the JSON decoder raise RecursionError, which
    ended the daemon, and again after every restart (the offset was never
    committed)."""
    deep = b'{"tenant": "t1", "device": "d1", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    dead = consume(offsets(), 0, deep)
    assert isinstance(dead, ProduceDeadLetter)
    assert dead.refusal.reason == "too_deep"
    at_the_limit = b'{"tenant": "t1", "device": "d1", "x": ' + b"[" * 63 + b"]" * 63 + b"}"
    assert isinstance(consume(offsets(), 0, at_the_limit), Publish)


def test_a_record_the_bridge_fails_on_is_an_internal_error_dead_letter() -> None:
    class Buggy(CommandPlan):
        def resolve(self, value: bytes | None, headers: Any) -> Any:
            raise ZeroDivisionError("division by zero")

    plan, _ = compile_command(CommandMapping(), "commands[0]")
    assert plan is not None
    machine = CommandOffsets(Buggy(**vars(plan)))
    dead = consume(machine, 0)
    assert isinstance(dead, ProduceDeadLetter)
    assert dead.refusal.reason == "internal_error"
    assert dead.refusal.detail.startswith("ZeroDivisionError: the bridge failed on this record")
    machine.acknowledged(dead.record)  # its dead letter is in Kafka: the offset moves on
    assert machine.commits() == [Commit("cmd", 0, 1)]
